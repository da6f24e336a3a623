"""``ttc-gateway bench soak``: many streaming clients for minutes through the gateway: errors,
lost requests, added latency, and the gateway's memory over time.

Method: the instant stand-in engine (``gateway.bench.instant_engine``, its SSE chunks
``--chunk-delay-ms`` apart so that streams last) and the gateway (``ttc-gateway serve``, one
process, access log off) each run in a process of their own. ``--clients`` concurrent clients
first send ``--baseline`` seconds of streamed chat requests straight to the engine, then
``--duration`` seconds through the gateway; each client sends one request, reads it to
``[DONE]``, and sends the next. Per request: total time (send to ``[DONE]``) and time to the
first content chunk. An error is a non-200 status, an SSE error event, a stream cut before
``[DONE]``, or a client-side failure; a request is lost when it was sent and neither completed
nor failed (the run waits up to the request timeout for stragglers). Added latency = the
gateway's percentile minus the direct one at the same load. The gateway's resident memory
(``/proc/<pid>/status`` VmRSS) is sampled every ``--rss-every`` seconds; its growth is the last
sample against the first one after minute 1.

The issue's targets: zero errors, zero lost requests, RSS growth < 10 % from minute 1 to the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import aiohttp
import typer

from gateway.bench.common import (
    HOST,
    BenchError,
    Service,
    command_line,
    cpu_model,
    git_revision,
    percentile,
    progress,
    run_bench,
)
from gateway.engines.embedded import free_port

MODEL = "soak-model"
REQUEST_TIMEOUT_S = 60.0
TARGET_RSS_GROWTH = 0.10
MINUTE_S = 60.0


@dataclass
class Load:
    """What one phase's clients saw."""

    name: str
    sent: int = 0
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    total_s: list[float] = field(default_factory=list)
    first_chunk_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def lost(self) -> int:
        return self.sent - self.completed - sum(self.errors.values())


async def _one_request(session: aiohttp.ClientSession, url: str, load: Load) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "soak"}],
        "stream": True,
        "max_tokens": 16,
    }
    load.sent += 1
    started = time.perf_counter()
    first: float | None = None
    try:
        async with session.post(url + "/v1/chat/completions", json=body) as response:
            if response.status != 200:
                await response.read()
                load.errors[f"HTTP {response.status}"] += 1
                return
            async for line in response.content:
                if line.startswith(b"data: [DONE]"):
                    load.completed += 1
                    load.total_s.append(time.perf_counter() - started)
                    if first is not None:
                        load.first_chunk_s.append(first - started)
                    return
                if line.startswith(b'data: {"error"'):
                    load.errors["SSE error event"] += 1
                    return
                if first is None and b'"content"' in line:
                    first = time.perf_counter()
            load.errors["stream ended without [DONE]"] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        load.errors[type(exc).__name__] += 1


async def run_load(url: str, clients: int, duration_s: float, name: str) -> Load:
    """``clients`` loops of one request after another until ``duration_s`` has passed."""
    load = Load(name)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        stop_at = time.monotonic() + duration_s

        async def client() -> None:
            while time.monotonic() < stop_at:
                await _one_request(session, url, load)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        load.elapsed_s = time.perf_counter() - started
    return load


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


async def sample_rss(pid: int, every_s: float, samples: list[tuple[float, int]]) -> None:
    started = time.monotonic()
    while True:
        samples.append((time.monotonic() - started, rss_bytes(pid)))
        await asyncio.sleep(every_s)


async def _soak(gateway: Service, engine_url: str, options: SoakOptions) -> Report:
    progress(f"direct: {options.clients} clients for {options.baseline_s:.0f} s …")
    direct = await run_load(engine_url, options.clients, options.baseline_s, "direct")
    progress(_line(direct))
    assert gateway.process is not None
    samples: list[tuple[float, int]] = []
    sampler = asyncio.create_task(sample_rss(gateway.process.pid, options.rss_every_s, samples))
    progress(f"gateway: {options.clients} clients for {options.duration_s:.0f} s …")
    through = await run_load(gateway.base_url, options.clients, options.duration_s, "gateway")
    samples.append((samples[-1][0] if samples else 0.0, rss_bytes(gateway.process.pid)))
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    progress(_line(through))
    return Report(options, direct, through, samples)


@dataclass(frozen=True)
class SoakOptions:
    clients: int
    duration_s: float
    baseline_s: float
    chunk_delay_ms: float
    rss_every_s: float


@dataclass
class Report:
    options: SoakOptions
    direct: Load
    gateway: Load
    rss: list[tuple[float, int]]

    def rss_growth(self) -> tuple[int, int, float] | None:
        """(RSS after minute 1, RSS at the end, growth); None when the run was shorter."""
        after_minute = [rss for at, rss in self.rss if at >= MINUTE_S]
        if len(after_minute) < 2:
            return None
        first, last = after_minute[0], after_minute[-1]
        return first, last, (last - first) / first

    def rss_by_minute(self) -> list[tuple[int, int]]:
        """The first sample at or after each whole minute, and the last one."""
        out: dict[int, int] = {}
        for at, rss in self.rss:
            out.setdefault(int(at // MINUTE_S), rss)
        points = sorted(out.items())
        if self.rss and self.rss[-1][1] != points[-1][1]:
            points.append((round(self.rss[-1][0] / MINUTE_S), self.rss[-1][1]))
        return points

    def render(self) -> str:
        o = self.options
        lines = [
            "# ttc-gateway soak benchmark",
            "",
            f"Command: `{command_line()}`",
            "",
            f"Machine: {cpu_model()}; ttc-gateway {git_revision()}",
            "",
            f"Load: {o.clients} concurrent streaming clients, one request after another; "
            f"engine chunks {o.chunk_delay_ms:g} ms apart (5 SSE events per answer); direct "
            f"{o.baseline_s:.0f} s, then through the gateway {o.duration_s:.0f} s. The clients, "
            "the engine and the gateway share this machine's cores.",
            "",
            "| phase | requests | completed | errors | lost | req/s | p50 ms | p99 ms "
            "| first chunk p50 ms | first chunk p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for load in (self.direct, self.gateway):
            lines.append(
                f"| {load.name} | {load.sent:,} | {load.completed:,} | "
                f"{sum(load.errors.values()):,} | {load.lost:,} | "
                f"{load.completed / load.elapsed_s:,.0f} | {_ms(load.total_s, 50)} | "
                f"{_ms(load.total_s, 99)} | {_ms(load.first_chunk_s, 50)} | "
                f"{_ms(load.first_chunk_s, 99)} |"
            )
        for load in (self.direct, self.gateway):
            for kind, count in load.errors.most_common():
                lines.append(f"\n{load.name} errors: {count:,} x {kind}")
        gateway, direct = self.gateway, self.direct
        added_p50 = _added(gateway.total_s, direct.total_s, 50)
        added_p99 = _added(gateway.total_s, direct.total_s, 99)
        added_first = _added(gateway.first_chunk_s, direct.first_chunk_s, 99)
        errors = sum(gateway.errors.values())
        lines += [
            "",
            f"Added latency (gateway - direct, whole stream): p50 {added_p50}, p99 {added_p99}; "
            f"to the first chunk: p99 {added_first}",
            "",
            "Gateway RSS (MiB) at the start of each minute: "
            + ", ".join(f"{minute}: {rss / 2**20:.1f}" for minute, rss in self.rss_by_minute()),
            "",
            "Targets:",
            "",
            _verdict(errors == 0, "errors through the gateway", errors),
            _verdict(gateway.lost == 0, "lost requests", gateway.lost),
        ]
        growth = self.rss_growth()
        if growth is None:
            lines.append("- not checked: RSS growth (the run was shorter than two minutes)")
        else:
            first, last, ratio = growth
            lines.append(
                f"- {'PASS' if ratio < TARGET_RSS_GROWTH else 'FAIL'} RSS growth from minute 1 "
                f"to the end: {first / 2**20:.1f} → {last / 2**20:.1f} MiB = {ratio:+.1%} "
                f"(target < {TARGET_RSS_GROWTH:.0%})"
            )
        return "\n".join(lines)

    @property
    def passed(self) -> bool:
        growth = self.rss_growth()
        return (
            not self.gateway.errors
            and self.gateway.lost == 0
            and (growth is None or growth[2] < TARGET_RSS_GROWTH)
        )


def _verdict(ok: bool, what: str, value: int) -> str:
    return f"- {'PASS' if ok else 'FAIL'} {what}: {value:,} (target 0)"


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:,.1f}" if values else "-"


def _added(ours: list[float], base: list[float], q: float) -> str:
    if not ours or not base:
        return "-"
    return f"{(percentile(ours, q) - percentile(base, q)) * 1000:+,.1f} ms"


def _line(load: Load) -> str:
    return (
        f"  {load.name}: {load.sent:,} sent, {load.completed:,} completed, "
        f"{sum(load.errors.values()):,} errors, {load.lost:,} lost, p99 {_ms(load.total_s, 99)} ms"
    )


def soak(
    clients: Annotated[int, typer.Option(min=1, max=4096, help="Concurrent clients")] = 256,
    duration: Annotated[float, typer.Option(min=1, help="Seconds through the gateway")] = 600,
    baseline: Annotated[float, typer.Option(min=1, help="Seconds straight to the engine")] = 30,
    chunk_delay_ms: Annotated[float, typer.Option(min=0, help="Between SSE chunks")] = 20,
    rss_every: Annotated[float, typer.Option(min=1, help="Seconds between RSS samples")] = 10,
    output: Annotated[Path | None, typer.Option(help="Also write the report here")] = None,
) -> None:
    """Streaming clients for minutes through the gateway: errors, lost requests, added latency,
    memory growth (not part of CI: it takes ``--duration`` seconds)."""
    options = SoakOptions(clients, duration, baseline, chunk_delay_ms, rss_every)
    failed = False

    def report() -> str:
        nonlocal failed
        with (
            tempfile.TemporaryDirectory(prefix="ttc-soak-") as tmp,
            contextlib.ExitStack() as stack,
        ):
            work = Path(tmp)
            engine_port, gateway_port = free_port(), free_port()
            engine = Service(
                "engine",
                [
                    sys.executable,
                    "-m",
                    "gateway.bench.instant_engine",
                    "--port",
                    str(engine_port),
                    "--chunk-delay-ms",
                    str(chunk_delay_ms),
                ],
                engine_port,
                "/health",
                work / "engine.log",
            )
            config = work / "gateway.yaml"
            config.write_text(
                f"server: {{host: {HOST}, port: {gateway_port}, access_log: false, "
                "log_level: warning}\n"
                "pools:\n"
                "  - name: soak\n"
                "    engine: openai\n"
                f"    model: {MODEL}\n"
                f'    workers: [{{url: "{engine.base_url}", max_in_flight: 8192}}]\n'
            )
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
                service.wait_ready(60)
            result = asyncio.run(_soak(gateway, engine.base_url, options))
            failed = not result.passed
            return result.render()

    run_bench("soak", report, output)
    if failed:
        raise typer.Exit(1)
