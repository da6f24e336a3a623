"""Start real processes for tests: llama.cpp workers and the gateway's own CLI.

Each helper waits for readiness by polling an HTTP endpoint with a deadline and always stops
what it started, so a failing test never leaves a process behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from gateway.engines.embedded import free_port
from gateway.engines.llamacpp_worker import command

REPO = Path(__file__).resolve().parents[1]


async def llamacpp_processing(http: Any, worker_url: str) -> float:
    """llama.cpp's ``requests_processing`` gauge (an ``httpx.AsyncClient`` asks)."""
    for line in (await http.get(worker_url + "/metrics")).text.splitlines():
        if line.startswith("llamacpp:requests_processing"):
            return float(line.split()[-1])
    raise AssertionError("llamacpp:requests_processing not exported")


def wait_http_ok(
    url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            out = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise RuntimeError(
                f"process exited with {process.returncode} before {url} was up:\n{out[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s}s ({last})")


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 15
) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextlib.contextmanager
def llamacpp_worker(
    parallel: int = 8, context: int = 8192
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real llama.cpp server (xllamacpp + SmolLM2-135M) in its own process."""
    port = free_port()
    # a file, not a pipe: llama.cpp blocks (and stops serving) once a pipe is full
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command(sys.executable, port, parallel=parallel, context=context),
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http_ok(url + "/health", 90, process)
            yield url, process
        finally:
            stop_process(process)


@contextlib.contextmanager
def gateway_cli(
    config: dict[str, Any] | None,
    *extra_args: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 90,
    ready_path: str = "/ready",
    log: Path | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``ttc-gateway serve`` exactly as a user runs it, in a subprocess; stopped with Ctrl-C.
    Up once ``ready_path`` answers 200 (``/health`` when a pool is meant to be down). Its
    output goes to ``log`` when given (a busy gateway would fill an unread pipe), else to a
    pipe."""
    port = free_port()
    args = [sys.executable, "-m", "gateway", "serve", "--port", str(port), *extra_args]
    with tempfile.TemporaryDirectory() as tmp:
        if config is not None:
            path = Path(tmp) / "gateway.yaml"
            path.write_text(yaml.safe_dump(config))
            args += ["--config", str(path)]
        output = log.open("wb") if log is not None else None
        process = subprocess.Popen(
            args,
            stdout=output or subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env={**os.environ, **(env or {})},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http_ok(url + ready_path, timeout_s, process)
            yield url, process
        finally:
            stop_process(process, signal.SIGINT)
            if output is not None:
                output.close()


def llamacpp_pool(url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "llama",
        "engine": "llamacpp",
        "model": "smollm2",
        "workers": [{"url": url}],
        **overrides,
    }


def quiet_server() -> dict[str, Any]:
    return {"log_level": "warning", "access_log": False}


class RedisServer:
    """A real ``redis-server`` on a free loopback port, with an append-only file (fsync on every
    write) in ``data_dir``, so a test can kill it and start it again with its data."""

    def __init__(self, data_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI"):
                raise RuntimeError("CI must install Debian's redis-server (see .ci/run)")
            import pytest

            pytest.skip("needs redis-server (apt install redis-server)")
        self.binary = binary
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "dir": str(self.data_dir),
            "appendonly": "yes",
            "appendfsync": "always",
            "save": "",
            "enable-debug-command": "local",  # DEBUG SLEEP: a Redis that answers late
        }
        args = [self.binary, *(arg for k, v in options.items() for arg in (f"--{k}", v))]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING")

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown."""
        if self.process is not None:
            stop_process(self.process, signal.SIGKILL)
            self.process = None


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory() as data_dir:
        server = RedisServer(Path(data_dir))
        server.start()
        try:
            yield server
        finally:
            server.kill()


@contextlib.contextmanager
def prometheus_server(rule_files: list[Path] | None = None) -> Iterator[tuple[str, Path]]:
    """A real Prometheus (Debian's ``prometheus``) scraping every second the targets a test
    writes into the yielded ``targets.json`` (file service discovery)."""
    if shutil.which("prometheus") is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must install Debian's prometheus (see .ci/run)")
        import pytest

        pytest.skip("needs the prometheus server (apt install prometheus)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        targets = home / "targets.json"
        targets.write_text("[]")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(f) for f in rule_files or ()],
            "scrape_configs": [
                {"job_name": "ttc-gateway", "file_sd_configs": [{"files": [str(targets)]}]}
            ],
        }
        (home / "prometheus.yml").write_text(yaml.safe_dump(config))
        with (home / "prometheus.log").open("wb") as log:
            process = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={home / 'prometheus.yml'}",
                    f"--storage.tsdb.path={home / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                wait_http_ok(url + "/-/ready", 60, process)
                yield url, targets
            finally:
                stop_process(process)
