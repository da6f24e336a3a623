"""Start and stop the llama.cpp workers of pools marked ``embedded`` (the no-config default).

The gateway's parent process starts them before serving, so several uvicorn worker processes
share one engine, and the pools see them as ordinary workers at a loopback URL.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from types import TracebackType

from gateway.config import EmbeddedLlamaCppConfig, GatewaySettings, PoolConfig, WorkerConfig
from gateway.engines import llamacpp_worker

log = logging.getLogger("ttc.embedded")
engine_log = logging.getLogger("ttc.embedded.llamacpp")


def free_port() -> int:
    """A loopback port free right now (the engine, the tests' and benchmarks' servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedLlamaCpp:
    """One llama.cpp server in a child process."""

    def __init__(self, config: EmbeddedLlamaCppConfig) -> None:
        self.config = config
        self.port = config.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_tail: deque[str] = deque(maxlen=40)

    def _drain(self, process: subprocess.Popen[bytes]) -> None:
        """Read the engine's log for as long as it runs: debug-log it, keep the tail."""
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace")
            self._log_tail.append(line)
            engine_log.debug("%s", line.rstrip())

    def start(self) -> None:
        command = llamacpp_worker.command(
            sys.executable,
            self.port,
            parallel=self.config.parallel,
            context=self.config.context,
            model=self.config.model_path,
            threads=self.config.threads,
        )
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the gateway, which then stops us in order
        )
        # llama.cpp logs a lot; an undrained pipe fills up and freezes the engine.
        threading.Thread(target=self._drain, args=(self._process,), daemon=True).start()
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process.wait()
                tail = "".join(self._log_tail)
                raise RuntimeError(f"embedded llama.cpp exited at start-up:\n{tail[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"embedded llama.cpp not ready after {self.config.startup_timeout_s}s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if process.stdin:
            process.stdin.close()  # the child exits when its stdin closes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EmbeddedEngines:
    """The embedded workers of a configuration; ``resolve`` turns them into plain workers."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.engines: dict[str, EmbeddedLlamaCpp] = {
            pool.name: EmbeddedLlamaCpp(pool.embedded)
            for pool in settings.pools
            if pool.embedded is not None
        }

    def __enter__(self) -> GatewaySettings:
        try:
            for name, engine in self.engines.items():
                log.info("starting embedded llama.cpp worker for pool %s on %s", name, engine.url)
                engine.start()
                log.info("embedded llama.cpp worker for pool %s is ready at %s", name, engine.url)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.resolve()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for engine in self.engines.values():
            engine.stop()

    def resolve(self) -> GatewaySettings:
        pools: list[PoolConfig] = []
        for pool in self.settings.pools:
            engine = self.engines.get(pool.name)
            if engine is None:
                pools.append(pool)
                continue
            slots = engine.config.parallel * 32  # llama.cpp queues beyond its slots
            pools.append(
                pool.model_copy(
                    update={
                        "embedded": None,
                        "workers": [
                            *pool.workers,
                            WorkerConfig(
                                url=engine.url,
                                max_in_flight=slots,
                                max_sequences=engine.config.parallel,
                                energy=engine.config.energy,
                                usd_per_hour=engine.config.usd_per_hour,
                            ),
                        ],
                    }
                )
            )
        return self.settings.model_copy(update={"pools": pools})
