"""``ttc-gateway bench fanout``: the gateway's CPU per streamed token when a strategy fans out,
next to a bare client reading the same streams (the floor), in one run.

Method: the instant stand-in engine (``gateway.bench.instant_engine --tokens T``) answers an
``n=k`` streaming request at once with T tokens per choice, one token per SSE chunk, the
choices interleaved as vLLM streams them, then a usage chunk. The gateway (``ttc-gateway
serve``, one process, one pool of that engine) runs each strategy that fans out on one pool:
``--clients`` clients, each sending one request after another (``X-TTC-Strategy``,
``X-TTC-K: k``, ``max_tokens``, answered non-streamed) for ``--duration`` seconds after a
``--warmup``. The floor is a bare client in a child process: aiohttp reading the same ``n=k``
stream from the engine line by line (``async for line in response.content``) and parsing each
``data:`` line with orjson, nothing else, with the same number of clients. Each row's CPU is
its process's ``utime + stime`` (``/proc/<pid>/stat``) over the measured window (from the
go signal to the last answer), divided by the completion tokens of the answers (each answer's
``usage``; the floor's from the stream's usage chunk). Every row runs in every repeat, the
order rotated by one each repeat, the machine settled before each; medians are reported.

Token counts must be exact: the stand-in sends every content chunk before any finish chunk, so
a strategy that stops early (on a finish) has still received every token, and every answer's
``usage.completion_tokens`` must be k x T (``ttc.sample_tokens`` T for each sample). A wrong
count fails the command (exit 1) after the report.

The last line of the report is ``relay cost: X us/token = Rx the floor``: X the highest median
CPU per token among the strategies measured, R = X / the floor's.
"""

from __future__ import annotations

import contextlib
import os
import platform
import selectors
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from gateway.bench.common import (
    HOST,
    BenchError,
    Service,
    command_line,
    cpu_model,
    git_revision,
    progress,
    run_bench,
    settle,
    version,
)
from gateway.config import EngineKind
from gateway.engines.adapters import adapter_for
from gateway.engines.embedded import free_port

MODEL = "m"
FLOOR = "floor"
# Strategies that fan out on one pool (no judge, small or large pool needed).
FANOUT_STRATEGIES = ("majority_vote", "short_m_at_k", "first_finish")
ENGINES = ("openai", "vllm")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from ``/proc/<pid>/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rpartition(")")[2].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measurement:
    tokens: int
    cpu_s: float
    elapsed_s: float
    requests: int
    errors: int
    mismatches: int
    examples: list[str]

    @property
    def us_per_token(self) -> float:
        return self.cpu_s * 1e6 / self.tokens if self.tokens else float("inf")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s else 0.0


@dataclass
class Row:
    key: str
    label: str
    runs: list[Measurement] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return float(statistics.median(getattr(m, attribute) for m in self.runs))


def _read_line(process: subprocess.Popen[bytes], timeout_s: float, what: str) -> bytes:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise BenchError(f"no {what} from the load process after {timeout_s:.0f} s")
    line = process.stdout.readline()
    if not line:
        raise BenchError(f"the load process exited before its {what}")
    return line


def measure(
    argv: list[str], measured_pid: int | None, duration_s: float, log_path: Path
) -> Measurement:
    """Run one load child; the CPU of ``measured_pid`` (None: the child itself) over its
    measured window."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
    try:
        assert process.stdin is not None
        ready = _read_line(process, 120, "ready line")
        if ready.strip() != b"ready":
            raise BenchError(f"the load process failed its warm-up: {ready[:500]!r}")
        pid = process.pid if measured_pid is None else measured_pid
        cpu_0 = process_cpu_s(pid)
        process.stdin.write(b"go\n")
        process.stdin.flush()
        result = orjson.loads(_read_line(process, duration_s + 180, "results"))
        cpu_1 = process_cpu_s(pid)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return Measurement(
        tokens=int(result["completion_tokens"]),
        cpu_s=cpu_1 - cpu_0,
        elapsed_s=float(result["elapsed_s"]),
        requests=int(result["requests"]),
        errors=int(result["errors"]),
        mismatches=int(result["mismatches"]),
        examples=list(result["examples"]),
    )


@dataclass(frozen=True)
class FanoutOptions:
    duration_s: float
    warmup_s: float
    repeat: int
    clients: int
    k: int
    tokens: int
    max_tokens: int
    strategies: list[str]
    engine: str
    floor_loop: str = "uvloop"


def _gateway_config(directory: Path, upstream: str, engine: str, port: int) -> Path:
    path = directory / "gateway.yaml"
    path.write_text(
        f"server: {{host: {HOST}, port: {port}, access_log: false, log_level: warning}}\n"
        "pools:\n"
        "  - name: standin\n"
        f"    engine: {engine}\n"
        f"    model: {MODEL}\n"
        f'    workers: [{{url: "{upstream}", max_in_flight: 4096}}]\n'
    )
    return path


def upstream_stream_options(engine: str) -> dict[str, Any]:
    """The ``stream_options`` the gateway's sampler sends this engine (the floor asks for the
    same stream)."""
    body = adapter_for(EngineKind(engine)).prepare(
        {"stream": True, "stream_options": {"include_usage": True}}, MODEL, "bench"
    )
    return dict(body["stream_options"])


def _run(o: FanoutOptions) -> tuple[str, bool]:
    with (
        tempfile.TemporaryDirectory(prefix="ttc-fanout-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        engine_port, gateway_port = free_port(), free_port()
        engine = Service(
            "stand-in",
            [
                sys.executable,
                "-m",
                "gateway.bench.instant_engine",
                "--port",
                str(engine_port),
                "--tokens",
                str(o.tokens),
            ],
            engine_port,
            "/health",
            work / "engine.log",
        )
        config = _gateway_config(work, engine.base_url, o.engine, gateway_port)
        gateway = Service(
            "ttc-gateway",
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            gateway_port,
            "/ready",
            work / "gateway.log",
        )
        for service in (engine, gateway):
            stack.callback(service.stop)
            service.start()
        progress("starting the stand-in engine and the gateway …")
        for service in (engine, gateway):
            service.wait_ready(60)
        assert gateway.process is not None
        stream_options = upstream_stream_options(o.engine)

        def load_argv(mode: str, url: str, strategy: str) -> list[str]:
            return [
                sys.executable,
                "-m",
                "gateway.bench.fanout_load",
                "--url",
                url,
                "--mode",
                mode,
                "--strategy",
                strategy,
                "--k",
                str(o.k),
                "--tokens",
                str(o.tokens),
                "--max-tokens",
                str(o.max_tokens),
                "--clients",
                str(o.clients),
                "--warmup",
                str(o.warmup_s),
                "--duration",
                str(o.duration_s),
                "--stream-options",
                orjson.dumps(stream_options).decode(),
                "--loop",
                o.floor_loop,
            ]

        rows = {FLOOR: Row(FLOOR, f"bare client (floor), n={o.k} stream")}
        for strategy in o.strategies:
            rows[strategy] = Row(strategy, f"gateway {strategy} k={o.k}")
        keys = list(rows)
        total = o.repeat * len(keys)
        done = 0
        for r in range(o.repeat):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for key in order:
                settle()
                if key == FLOOR:
                    argv, pid = load_argv("floor", engine.base_url, "-"), None
                else:
                    argv, pid = load_argv("gateway", gateway.base_url, key), gateway.process.pid
                try:
                    result = measure(argv, pid, o.duration_s, work / "load.log")
                except BenchError as exc:
                    raise BenchError(
                        f"{rows[key].label}: {exc}\nload log:\n{_tail(work / 'load.log')}\n"
                        f"gateway log:\n{gateway.log_tail()}"
                    ) from None
                rows[key].runs.append(result)
                done += 1
                progress(
                    f"[{done}/{total}] repeat {r + 1} {rows[key].label:<36} "
                    f"{result.tokens_per_s:>9,.0f} tokens/s {result.us_per_token:6.2f} us/token "
                    f"requests {result.requests} errors {result.errors} "
                    f"mismatches {result.mismatches}"
                )
        return render(o, rows, stream_options)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def relay_cost(rows: dict[str, Row]) -> tuple[float, float]:
    """(X, R): the worst strategy's median µs/token, and X over the floor's."""
    worst = max(row.median("us_per_token") for key, row in rows.items() if key != FLOOR)
    return worst, worst / rows[FLOOR].median("us_per_token")


def render(
    o: FanoutOptions, rows: dict[str, Row], stream_options: dict[str, Any]
) -> tuple[str, bool]:
    floor = rows[FLOOR].median("us_per_token")
    lines = [
        "# ttc-gateway fan-out relay benchmark",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}, "
        f"{platform.system()} {platform.release()}",
        "",
        f"Versions: ttc-gateway {version('ttc-gateway')} ({git_revision()}); Python "
        f"{platform.python_version()}; aiohttp {version('aiohttp')}; orjson "
        f"{version('orjson')}; uvloop {version('uvloop')}",
        "",
        f"Setup: instant stand-in engine, {o.tokens} tokens per sample, one token per SSE chunk, "
        f"the k={o.k} choices interleaved in one stream (stream_options "
        f"{orjson.dumps(stream_options).decode()}); one gateway process, one `{o.engine}` pool; "
        f"{o.clients} clients, one request after another, max_tokens {o.max_tokens}, "
        f"{o.warmup_s:g} s warm-up and {o.duration_s:g} s measured per row; rows interleaved, "
        f"{o.repeat} repeat(s), medians shown. CPU: the process's utime+stime "
        "(/proc/<pid>/stat) over the window, per completion token of the answers' usage. "
        f"Floor: a bare aiohttp client ({o.floor_loop} event loop) reading the same stream from "
        "the engine line by line and orjson-parsing each data: line, in its own process.",
        "",
        "| target | tokens/s | CPU us/token | x floor | us/token per repeat | requests | errors "
        "| token mismatches |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    ok = True
    problems: list[str] = []
    for row in rows.values():
        us = row.median("us_per_token")
        errors = sum(m.errors for m in row.runs)
        mismatches = sum(m.mismatches for m in row.runs)
        if errors or mismatches:
            ok = False
            for m in row.runs:
                problems += [f"- {row.label}: {e}" for e in m.examples]
        lines.append(
            f"| {row.label} | {row.median('tokens_per_s'):,.0f} | {us:.2f} | {us / floor:.2f} "
            f"| {', '.join(f'{m.us_per_token:.2f}' for m in row.runs)} "
            f"| {sum(m.requests for m in row.runs):,} | {errors} | {mismatches} |"
        )
    expected = o.k * min(o.tokens, o.max_tokens)
    lines.append("")
    if ok:
        lines.append(
            f"Token counts exact: every answer's usage.completion_tokens = {expected} "
            f"(k={o.k} x {min(o.tokens, o.max_tokens)}), every floor stream's usage too."
        )
    else:
        lines += ["Token counts WRONG or requests failed (first examples):", "", *problems[:20]]
    worst, ratio = relay_cost(rows)
    lines += ["", f"relay cost: {worst:.2f} us/token = {ratio:.2f}x the floor"]
    return "\n".join(lines), ok


def _strategy_list(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in FANOUT_STRATEGIES]
    if not chosen or unknown:
        raise typer.BadParameter(
            f"expected some of {', '.join(FANOUT_STRATEGIES)} (comma-separated), got {text!r}"
        )
    return list(dict.fromkeys(chosen))


def fanout(
    duration: Annotated[
        float, typer.Option(min=1, max=600, help="Seconds measured per row and repeat")
    ] = 15,
    warmup: Annotated[
        float, typer.Option(min=0, max=60, help="Seconds of warm-up before each row")
    ] = 2,
    repeat: Annotated[
        int, typer.Option(min=1, max=20, help="Repeat every row; medians are reported")
    ] = 3,
    clients: Annotated[int, typer.Option(min=1, max=256, help="Concurrent clients")] = 8,
    k: Annotated[int, typer.Option(min=1, max=64, help="Samples per request (n upstream)")] = 8,
    tokens: Annotated[
        int, typer.Option(min=1, max=100_000, help="Tokens per sample the engine streams")
    ] = 200,
    max_tokens: Annotated[int, typer.Option(min=1, help="The clients' max_tokens")] = 256,
    strategies: Annotated[
        str, typer.Option(help="Comma-separated strategies that fan out on one pool")
    ] = ",".join(FANOUT_STRATEGIES),
    engine: Annotated[
        str, typer.Option(help="The pool's engine kind: openai, or vllm (per-chunk usage)")
    ] = "openai",
    floor_loop: Annotated[
        str,
        typer.Option(
            help="The floor client's event loop: uvloop (the gateway's own) or asyncio's default"
        ),
    ] = "uvloop",
    output: Annotated[Path | None, typer.Option(help="Also write the report here")] = None,
) -> None:
    """Gateway CPU per streamed token for fanned-out strategies vs. a bare client (the floor)."""
    if engine not in ENGINES:
        raise typer.BadParameter(f"--engine: expected one of {', '.join(ENGINES)}")
    if floor_loop not in ("uvloop", "asyncio"):
        raise typer.BadParameter("--floor-loop: expected uvloop or asyncio")
    if not Path("/proc/self/stat").exists():
        typer.echo("bench fanout reads CPU times from /proc (Linux only)", err=True)
        raise typer.Exit(2)
    options = FanoutOptions(
        duration_s=duration,
        warmup_s=warmup,
        repeat=repeat,
        clients=clients,
        k=k,
        tokens=tokens,
        max_tokens=max_tokens,
        strategies=_strategy_list(strategies),
        engine=engine,
        floor_loop=floor_loop,
    )
    exact = True

    def report() -> str:
        nonlocal exact
        text, exact = _run(options)
        return text

    run_bench("fanout", report, output)
    if not exact:
        typer.echo("bench fanout: token counts were wrong or requests failed (see above)", err=True)
        raise typer.Exit(1)
