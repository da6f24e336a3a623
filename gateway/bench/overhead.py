"""``ttc-gateway bench overhead``: what the gateway adds to a request, next to LiteLLM, in one run.

Method: an instant stand-in engine (``gateway.bench.instant_engine``, raw
ASGI under uvicorn) serves every request; the load generator is ``wrk`` (not Python, which would
saturate a core by itself). In one run the stand-in, the gateway (once per ``--gateway-workers``
count) and the LiteLLM proxy (``deploy/litellm/setup.sh``) are started on free loopback ports,
each target x mode x concurrency gets a warm-up and a measured ``wrk --latency`` run, interleaved
so drift hits all targets alike, and latency is reported as ADDED to the direct stand-in's in
the same repeat. Streaming time-to-first-token, which ``wrk`` cannot see, is measured by a
sequential raw-socket client. Every child runs in its own process group and is stopped at the
end, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from gateway.bench.common import (
    HOST,
    PACKAGE_DIR,
    BenchError,
    Service,
    command_line,
    cpu_model,
    git_revision,
    percentile,
    progress,
    run_bench,
    settle,
    version,
)
from gateway.engines.embedded import free_port

MODEL = "m"
CHAT_PATH = "/v1/chat/completions"
BODIES = {
    "non-streaming": '{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":8}',
    "streaming": '{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":8,'
    '"stream":true}',
}
MODES = tuple(BODIES)
# LiteLLM refuses to start without a master key. Every target gets the same header (the
# stand-in and the gateway ignore it), so every request carries the same bytes.
API_KEY = "sk-bench-" + secrets.token_hex(16)
# The targets for the `single` path, one gateway process, on a 2-core machine.
TARGET_ADDED_P50_MS = 0.6
TARGET_RPS_C64 = 1500.0
TARGET_TTFT_ADDED_MS = 1.0

DIRECT = "direct"
LITELLM = "litellm"


def _gateway_key(workers: int) -> str:
    return f"gateway:{workers}"


def post(url: str, body: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url,
        data=body.encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def probe(service: Service) -> None:
    """One request per mode must come back right before anything is measured."""
    url = service.base_url + CHAT_PATH
    status, payload = post(url, BODIES["non-streaming"])
    if status != 200 or b'"choices"' not in payload:
        raise BenchError(f"{service.name}: non-streaming probe got {status}: {payload[:300]!r}")
    status, payload = post(url, BODIES["streaming"])
    if status != 200 or b"[DONE]" not in payload:
        raise BenchError(f"{service.name}: streaming probe got {status}: {payload[:300]!r}")


# -- wrk ----------------------------------------------------------------------------------------
@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(text: str) -> WrkResult:
    """Requests/s, p50/p99 (``--latency``) and errors from wrk's report."""
    percentiles = {
        int(p): _ms(v, u)
        for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m|h)\b", text, re.M)
    }
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s+(\d+) requests in", text, re.M)
    if rps is None or total is None or 50 not in percentiles or 99 not in percentiles:
        raise BenchError(f"cannot read wrk's report:\n{text}")
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        requests=int(total.group(1)),
        errors=errors,
    )


def run_wrk(url: str, script: Path, connections: int, threads: int, duration_s: int) -> WrkResult:
    argv = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        "30s",  # LiteLLM at c=256 answers in seconds; wrk's 2 s default would drop those
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed:\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


def write_lua(directory: Path, mode: str) -> Path:
    path = directory / f"{mode}.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body   = '{BODIES[mode]}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {API_KEY}"\n'
    )
    return path


# -- time to first token ------------------------------------------------------------------------
_FIRST_TOKEN = re.compile(rb'"(?:content|text)":\s*"[^"]')


class FirstTokenClient:
    """A keep-alive HTTP/1.1 connection that times a streamed request to its first token.

    Raw asyncio streams rather than an HTTP library: the client's own cost is then small and
    the same for every target, so the difference between two targets is the added time.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        body = BODIES["streaming"].encode()
        self._request = (
            f"POST {CHAT_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            with contextlib.suppress(OSError):
                await self._streams[1].wait_closed()
            self._streams = None

    async def ttft_ms(self) -> float:
        """Milliseconds from sending the request to the first SSE event carrying content."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(HOST, self.port)
        reader, writer = self._streams
        started = time.perf_counter()
        writer.write(self._request)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, _, header_block = head.partition(b"\r\n")
        if b" 200 " not in status_line + b" ":
            raise BenchError(f"streaming request to port {self.port} got {status_line!r}")
        headers = header_block.lower()
        first: float | None = None
        seen = b""
        if b"transfer-encoding: chunked" in headers:
            while True:
                size = int((await reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers are sent
                    break
                seen += (await reader.readexactly(size + 2))[:-2]
                if first is None and _FIRST_TOKEN.search(seen):
                    first = time.perf_counter()
        else:
            length = re.search(rb"content-length:\s*(\d+)", headers)
            if length is None:
                raise BenchError(f"port {self.port} answered neither chunked nor with a length")
            seen = await reader.readexactly(int(length.group(1)))
            first = time.perf_counter()
        if b"connection: close" in headers:
            await self.close()
        if first is None or b"[DONE]" not in seen:
            raise BenchError(f"port {self.port} streamed no content: {seen[:300]!r}")
        return (first - started) * 1000


async def measure_ttft(ports: dict[str, int], requests: int, warmup: int) -> dict[str, list[float]]:
    """TTFT samples per target, one target at a time.

    Not interleaved request by request: LiteLLM keeps a core busy with its logging after each
    answer, which would land on the next target's request.
    """
    samples: dict[str, list[float]] = {}
    for key, port in ports.items():
        settle()
        client = FirstTokenClient(port)
        try:
            for _ in range(warmup):
                await asyncio.wait_for(client.ttft_ms(), timeout=30)
            samples[key] = [
                await asyncio.wait_for(client.ttft_ms(), timeout=30) for _ in range(requests)
            ]
        finally:
            await client.close()
    return samples


# -- report -------------------------------------------------------------------------------------
@dataclass
class Row:
    key: str
    mode: str
    concurrency: int
    runs: list[WrkResult] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return float(statistics.median(getattr(r, attribute) for r in self.runs))


def _fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


class Report:
    """Collects the runs and writes the markdown."""

    def __init__(self, labels: dict[str, str], gateway_workers: list[int]) -> None:
        self.labels = labels
        self.gateway_workers = gateway_workers
        self.rows: dict[tuple[str, str, int], Row] = {}
        self.ttft: dict[str, list[list[float]]] = {}  # per target, one sample list per repeat

    def add(self, key: str, mode: str, concurrency: int, result: WrkResult) -> None:
        self.rows.setdefault((key, mode, concurrency), Row(key, mode, concurrency)).runs.append(
            result
        )

    def added(self, key: str, mode: str, c: int, attribute: str) -> float | None:
        """Median over repeats of (target - direct), each pair from the same repeat."""
        row, direct = self.rows.get((key, mode, c)), self.rows.get((DIRECT, mode, c))
        if row is None or direct is None or key == DIRECT:
            return None
        pairs = zip(row.runs, direct.runs, strict=False)
        return float(
            statistics.median(getattr(a, attribute) - getattr(b, attribute) for a, b in pairs)
        )

    def ratio_to_litellm(self, key: str, mode: str, c: int) -> float | None:
        row, peer = self.rows.get((key, mode, c)), self.rows.get((LITELLM, mode, c))
        if row is None or peer is None or key == DIRECT or peer.median("rps") == 0:
            return None
        return row.median("rps") / peer.median("rps")

    def table(self) -> list[str]:
        lines = [
            "| target | mode | conc | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms "
            "| req/s vs LiteLLM | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode in MODES:
            for c in sorted({k[2] for k in self.rows}):
                for key in self.labels:
                    row = self.rows.get((key, mode, c))
                    if row is None:
                        continue
                    ratio = self.ratio_to_litellm(key, mode, c)
                    lines.append(
                        f"| {self.labels[key]} | {mode} | {c} | {row.median('rps'):,.0f} "
                        f"| {_fmt(row.median('p50_ms'))} | {_fmt(row.median('p99_ms'))} "
                        f"| {_fmt(self.added(key, mode, c, 'p50_ms'), signed=True)} "
                        f"| {_fmt(self.added(key, mode, c, 'p99_ms'), signed=True)} "
                        f"| {'-' if ratio is None else f'{ratio:.1f}x'} "
                        f"| {sum(r.errors for r in row.runs)} |"
                    )
        return lines

    def ttft_stats(self, key: str) -> tuple[float, float] | None:
        runs = self.ttft.get(key)
        if not runs:
            return None
        return (
            statistics.median(percentile(s, 50) for s in runs),
            statistics.median(percentile(s, 99) for s in runs),
        )

    def ttft_added(self, key: str) -> tuple[float, float] | None:
        runs, direct = self.ttft.get(key), self.ttft.get(DIRECT)
        if not runs or not direct or key == DIRECT:
            return None
        pairs = list(zip(runs, direct, strict=False))
        return (
            statistics.median(percentile(a, 50) - percentile(b, 50) for a, b in pairs),
            statistics.median(percentile(a, 99) - percentile(b, 99) for a, b in pairs),
        )

    def ttft_table(self, requests: int) -> list[str]:
        if not self.ttft:
            return []
        lines = [
            f"Streaming time to first token, c=1, {requests} sequential requests per target "
            "(raw-socket client, one keep-alive connection, one target at a time):",
            "",
            "| target | TTFT p50 ms | TTFT p99 ms | added p50 ms | added p99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for key in self.labels:
            stats = self.ttft_stats(key)
            if stats is None:
                continue
            added = self.ttft_added(key)
            lines.append(
                f"| {self.labels[key]} | {_fmt(stats[0], 3)} | {_fmt(stats[1], 3)} "
                f"| {_fmt(added and added[0], 3, True)} | {_fmt(added and added[1], 3, True)} |"
            )
        return lines

    def summary(self) -> list[str]:
        if 1 not in self.gateway_workers:
            return ["Targets are for one gateway process: add 1 to --gateway-workers to check."]
        key = _gateway_key(1)
        lines = [f"Targets (`single` path, {self.labels[key]}, measured above):", ""]

        def verdict(name: str, value: float | None, ok: Callable[[float], bool], text: str) -> None:
            if value is None:
                lines.append(f"- n/a  {name}: not measured in this run")
            else:
                lines.append(f"- {'PASS' if ok(value) else 'FAIL'} {name}: {text.format(value)}")

        verdict(
            "added p50 latency at c=1, non-streaming",
            self.added(key, "non-streaming", 1, "p50_ms"),
            lambda v: v <= TARGET_ADDED_P50_MS,
            f"{{:.2f}} ms (target ≤ {TARGET_ADDED_P50_MS} ms)",
        )
        row = self.rows.get((key, "non-streaming", 64))
        verdict(
            "throughput at c=64, non-streaming",
            row.median("rps") if row else None,
            lambda v: v >= TARGET_RPS_C64,
            f"{{:,.0f}} req/s (target ≥ {TARGET_RPS_C64:,.0f} req/s)",
        )
        added = self.ttft_added(key)
        verdict(
            "added streaming time to first token at c=1 (p50)",
            added[0] if added else None,
            lambda v: v <= TARGET_TTFT_ADDED_MS,
            f"{{:.2f}} ms (target ≤ {TARGET_TTFT_ADDED_MS} ms"
            + (f"; p99 added {added[1]:.2f} ms)" if added else ")"),
        )
        return lines


# -- the command --------------------------------------------------------------------------------
def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise typer.BadParameter(f"{option}: expected integers ≥ 1, got {text!r}")
    return sorted(set(values))


def _litellm_config(directory: Path, upstream: str) -> Path:
    import yaml

    config = yaml.safe_load((PACKAGE_DIR / "litellm.yaml").read_text())
    for model in config["model_list"]:
        model["litellm_params"]["api_base"] = upstream + "/v1"
    path = directory / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _gateway_config(directory: Path, upstream: str) -> Path:
    path = directory / "gateway.yaml"
    path.write_text(
        f"server: {{host: {HOST}, port: 8000, access_log: false, log_level: warning}}\n"
        "pools:\n"
        "  - name: standin\n"
        "    engine: openai\n"
        f"    model: {MODEL}\n"
        f'    workers: [{{url: "{upstream}", max_in_flight: 4096}}]\n'
    )
    return path


def overhead(
    duration: Annotated[
        int, typer.Option(min=1, max=300, help="Seconds of each measured wrk run")
    ] = 8,
    warmup: Annotated[
        int, typer.Option(min=0, max=60, help="Seconds of the wrk warm-up before each")
    ] = 2,
    concurrency: Annotated[
        str, typer.Option(help="Comma-separated wrk connection counts")
    ] = "1,64,256",
    gateway_workers: Annotated[
        str, typer.Option(help="Comma-separated uvicorn worker counts; one gateway per count")
    ] = "1",
    repeat: Annotated[
        int, typer.Option(min=1, max=20, help="Repeat everything; medians are reported")
    ] = 1,
    ttft_requests: Annotated[
        int,
        typer.Option(
            min=0, max=100_000, help="Sequential streamed requests per target for TTFT (0: skip)"
        ),
    ] = 500,
    wrk_threads: Annotated[
        int, typer.Option(min=1, max=16, help="wrk threads (capped at the connection count)")
    ] = 1,
    litellm: Annotated[
        bool, typer.Option("--litellm/--no-litellm", help="Compare with LiteLLM")
    ] = True,
    litellm_venv: Annotated[
        Path,
        typer.Option(
            envvar="LITELLM_VENV",
            help="venv made by deploy/litellm/setup.sh (which makes .venv-litellm in the "
            "repository's root; the default is relative to the current directory)",
        ),
    ] = Path(".venv-litellm"),
    litellm_workers: Annotated[
        int, typer.Option(min=1, max=16, help="LiteLLM worker processes")
    ] = 1,
    output: Annotated[
        Path | None, typer.Option(help="Also write the report to this markdown file")
    ] = None,
) -> None:
    """Added latency and throughput of the gateway vs. the stand-in engine directly and LiteLLM."""
    levels = _int_list(concurrency, "--concurrency")
    worker_counts = _int_list(gateway_workers, "--gateway-workers")
    if shutil.which("wrk") is None:
        typer.echo("wrk is not installed (Debian package `wrk`)", err=True)
        raise typer.Exit(2)
    run_bench(
        "overhead",
        lambda: _run(
            levels,
            worker_counts,
            duration,
            warmup,
            repeat,
            ttft_requests,
            wrk_threads,
            litellm,
            litellm_venv,
            litellm_workers,
        ),
        output,
    )


def _run(
    levels: list[int],
    worker_counts: list[int],
    duration: int,
    warmup: int,
    repeat: int,
    ttft_requests: int,
    wrk_threads: int,
    litellm: bool,
    litellm_venv: Path,
    litellm_workers: int,
) -> str:
    notes: list[str] = []
    versions = [
        f"ttc-gateway {version('ttc-gateway')} ({git_revision()})",
        f"Python {platform.python_version()}",
        f"uvicorn {version('uvicorn')} (uvloop {version('uvloop')}, "
        f"httptools {version('httptools')})",
        f"FastAPI {version('fastapi')}, aiohttp {version('aiohttp')}",
    ]
    litellm_python = litellm_venv / "bin" / "python"
    if litellm and not (litellm_venv / "bin" / "litellm").exists():
        notes.append(
            f"LiteLLM skipped: no venv at {litellm_venv} (deploy/litellm/setup.sh makes it)"
        )
        litellm = False
    if not litellm and not notes:
        notes.append("LiteLLM skipped (--no-litellm)")

    with tempfile.TemporaryDirectory(prefix="ttc-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        standin = Service(
            "stand-in",
            [
                sys.executable,
                "-m",
                "gateway.bench.instant_engine",
                "--port",
                str(port := free_port()),
            ],
            port,
            "/health",
            work / "standin.log",
        )
        services: dict[str, Service] = {DIRECT: standin}
        config = _gateway_config(work, standin.base_url)
        for n in worker_counts:
            port = free_port()
            services[_gateway_key(n)] = Service(
                f"ttc-gateway ({n} worker{'s' if n > 1 else ''})",
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(config),
                    "--port",
                    str(port),
                    "--workers",
                    str(n),
                ],
                port,
                "/ready",
                work / f"gateway-{n}.log",
            )
        if litellm:
            port = free_port()
            services[LITELLM] = Service(
                f"LiteLLM ({litellm_workers} worker{'s' if litellm_workers > 1 else ''})",
                [
                    str(litellm_venv / "bin" / "litellm"),
                    "--config",
                    str(_litellm_config(work, standin.base_url)),
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--num_workers",
                    str(litellm_workers),
                ],
                port,
                "/health/liveliness",
                work / "litellm.log",
                env={
                    "LITELLM_MASTER_KEY": API_KEY,
                    "LITELLM_LOG": "ERROR",  # uvicorn at error level: no access log
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch from the internet
                    "LITELLM_TELEMETRY": "False",
                },
            )
        for service in services.values():
            stack.callback(service.stop)
            service.start()
        progress(f"starting {', '.join(s.name for s in services.values())} …")
        for key, service in services.items():
            try:
                service.wait_ready(120 if key == LITELLM else 30)
                probe(service)
            except BenchError as exc:
                if key != LITELLM:
                    raise
                notes.append(f"LiteLLM skipped: {str(exc).splitlines()[0].rstrip(':')} (log above)")
                progress(str(exc))
                service.stop()
                del services[LITELLM]
                break
        if LITELLM in services:
            done = subprocess.run(
                [
                    str(litellm_python),
                    "-c",
                    "import importlib.metadata as m; print(m.version('litellm'))",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            versions.append(f"LiteLLM {done.stdout.strip() or '?'} (`openai/` provider)")
        wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        versions.append(
            (wrk_version.stdout or wrk_version.stderr).splitlines()[0].split(" Copyright")[0]
        )

        labels = {key: s.name for key, s in services.items()}
        labels[DIRECT] = "stand-in direct"
        report = Report(labels, worker_counts)
        scripts = {mode: write_lua(work, mode) for mode in MODES}
        total = repeat * len(MODES) * len(levels) * len(services)
        done_runs = 0
        for r in range(repeat):
            for mode in MODES:
                for c in levels:
                    for key, service in services.items():
                        url = service.base_url + CHAT_PATH
                        settle()
                        if warmup:
                            run_wrk(url, scripts[mode], c, wrk_threads, warmup)
                        result = run_wrk(url, scripts[mode], c, wrk_threads, duration)
                        report.add(key, mode, c, result)
                        done_runs += 1
                        progress(
                            f"[{done_runs}/{total}] repeat {r + 1} {labels[key]:<28} {mode:<13} "
                            f"c={c:<4} {result.rps:>9,.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                            f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
                        )
            if ttft_requests:
                ports = {key: s.port for key, s in services.items()}
                progress(
                    f"repeat {r + 1}: time to first token, {ttft_requests} requests per target"
                )
                samples = asyncio.run(
                    measure_ttft(ports, ttft_requests, warmup=min(50, ttft_requests))
                )
                for key, values in samples.items():
                    report.ttft.setdefault(key, []).append(values)

    threads = f"-t{wrk_threads}" if wrk_threads == 1 else f"-t{wrk_threads} (-t1 at c=1)"
    lines = [
        "# ttc-gateway overhead benchmark",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}, "
        f"{platform.system()} {platform.release()}",
        "",
        "Versions: " + "; ".join(versions),
        "",
        "Setup: instant stand-in engine (raw ASGI, uvicorn+uvloop+httptools, access log off) on "
        "loopback; ttc-gateway `serve` with `access_log: false`, `log_level: warning`, one "
        "`openai` pool; LiteLLM proxy with `LITELLM_LOG=ERROR` (no access log), config from "
        "gateway/bench/litellm.yaml. "
        f"Load: `wrk {threads} -cC -d{duration}s --latency` with a POST Lua script, after a "
        f"{warmup} s warm-up per row; targets interleaved; {repeat} repeat(s), medians shown; "
        "added = target - direct in the same repeat.",
        *(["", *(f"Note: {n}" for n in notes)] if notes else []),
        "",
        *report.table(),
        "",
        *report.ttft_table(ttft_requests),
        "",
        *report.summary(),
    ]
    return "\n".join(lines)
