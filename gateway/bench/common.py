"""What every ``ttc-gateway bench`` command shares: servers run as child processes
(``Service``), waiting for an idle machine (``settle``), percentiles, the report's header
facts (versions, git revision, CPU, command line), and running a benchmark so that every child
is stopped however it ends (``run_bench``).

Nothing is read relative to the repository: the benchmarks run from a wheel as from a checkout.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

# The git revision is the package folder's (none for an installed wheel).
PACKAGE_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


@dataclass
class Service:
    """A server in a subprocess of its own process group, logging to a file.

    ``stdin_pipe``: give the child a pipe for standard input, held open until ``stop()``. The
    llama.cpp worker (``gateway.engines.llamacpp_worker``) exits when its standard input reaches
    EOF, which ``/dev/null`` does at once."""

    name: str
    argv: list[str]
    port: int
    ready_path: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    stdin_pipe: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE if self.stdin_pipe else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,  # its own group: stop() reaches uvicorn's workers too
            )

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise BenchError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + self.ready_path, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise BenchError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout_s``, reap."""
        process = self.process
        if process is None:
            return
        group = process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # uvicorn workers may outlive their supervisor
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        if process.stdin is not None:
            process.stdin.close()
        self.process = None


@dataclass
class Verdict:
    """One of an issue's targets, met or not, with the figure that decides it."""

    name: str
    ok: bool | None  # None: not measured in this run
    detail: str

    def line(self) -> str:
        mark = "n/a " if self.ok is None else ("PASS" if self.ok else "FAIL")
        return f"- {mark} {self.name}: {self.detail}"


def _cpu_times() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def settle(busy_below: float = 0.15, window_s: float = 0.25, timeout_s: float = 15.0) -> None:
    """Wait (bounded) until the machine is nearly idle, so one target's after-work (LiteLLM's
    logging, a finished wrk run's closing connections) is not billed to the next target."""
    if not Path("/proc/stat").exists():
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy_0, total_0 = _cpu_times()
        time.sleep(window_s)
        busy_1, total_1 = _cpu_times()
        if total_1 == total_0 or (busy_1 - busy_0) / (total_1 - total_0) < busy_below:
            return


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return rev + ("+uncommitted changes" if dirty else "")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def command_line() -> str:
    program = Path(sys.argv[0]).name
    if program == "__main__.py":
        program = "python -m gateway"
    return shlex.join([program, *sys.argv[1:]])


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the ``finally`` that stops the children runs."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_bench(name: str, make_report: Callable[[], str], output: Path | None) -> None:
    """Run a benchmark (children stopped on SIGTERM or Ctrl-C), print its report and write it
    to ``output``; failures become an exit code with one line on stderr."""
    try:
        with terminate_as_interrupt():
            report = make_report()
    except BenchError as exc:
        typer.echo(f"bench {name}: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo(f"bench {name}: interrupted; every child process was stopped", err=True)
        raise typer.Exit(130) from None
    typer.echo(report)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report + "\n")
        typer.echo(f"(written to {output})", err=True)


def progress(text: str) -> None:
    typer.echo(text, err=True)
