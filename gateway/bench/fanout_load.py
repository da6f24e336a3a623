"""The load of ``ttc-gateway bench fanout``, run as a child process: ``--clients`` loops of one
request after another, against the gateway (a strategy, answered non-streamed) or straight
against the stand-in engine (the floor: the same ``n=k`` stream the gateway asks for, read by a
bare aiohttp client line by line, every ``data:`` line parsed with orjson).

Protocol with the parent (``gateway.bench.fanout``): the child warms up for ``--warmup``
seconds, prints ``ready``, and waits for a line on stdin; then it runs for ``--duration``
seconds, lets the requests in flight finish, and prints one JSON line of results. The parent
reads the CPU of the measured process (``/proc/<pid>/stat``) when it sends the line and when
the results come, so what is measured is the window between them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson

REQUEST_TIMEOUT_S = 120.0
PROMPT = [{"role": "user", "content": "What is 3 + 4?"}]


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    completion_tokens: int = 0
    # answers whose token count is not the expected one (k x tokens)
    mismatches: int = 0
    examples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def problem(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(text)


@dataclass(frozen=True)
class LoadOptions:
    url: str
    mode: str  # "floor" or "gateway"
    strategy: str
    k: int
    tokens: int
    max_tokens: int
    stream_options: dict[str, Any]

    @property
    def expected_tokens(self) -> int:
        return self.k * min(self.tokens, self.max_tokens)


async def _floor_request(session: aiohttp.ClientSession, o: LoadOptions, out: LoadResult) -> None:
    """The floor: the stream the gateway reads, parsed by a bare client line by line."""
    body = {
        "model": "m",
        "messages": PROMPT,
        "max_tokens": o.max_tokens,
        "n": o.k,
        "stream": True,
        "stream_options": o.stream_options,
    }
    usage = None
    async with session.post(o.url + "/v1/chat/completions", json=body) as response:
        if response.status != 200:
            out.errors += 1
            out.problem(f"HTTP {response.status}: {(await response.read())[:200]!r}")
            return
        async for line in response.content:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            chunk = orjson.loads(payload)
            if chunk.get("usage") and not chunk.get("choices"):
                usage = chunk["usage"]
    out.requests += 1
    tokens = int(usage["completion_tokens"]) if usage else 0
    out.completion_tokens += tokens
    if tokens != o.expected_tokens:
        out.mismatches += 1
        out.problem(f"stream usage {tokens} tokens, expected {o.expected_tokens}")


async def _gateway_request(session: aiohttp.ClientSession, o: LoadOptions, out: LoadResult) -> None:
    body = {"model": "m", "messages": PROMPT, "max_tokens": o.max_tokens}
    headers = {"X-TTC-Strategy": o.strategy, "X-TTC-K": str(o.k)}
    async with session.post(o.url + "/v1/chat/completions", json=body, headers=headers) as r:
        raw = await r.read()
        if r.status != 200:
            out.errors += 1
            out.problem(f"HTTP {r.status}: {raw[:200]!r}")
            return
    answer = orjson.loads(raw)
    out.requests += 1
    tokens = int(answer["usage"]["completion_tokens"])
    out.completion_tokens += tokens
    per_sample = answer.get("ttc", {}).get("sample_tokens")
    expected_each = [min(o.tokens, o.max_tokens)] * o.k
    if tokens != o.expected_tokens or per_sample != expected_each:
        out.mismatches += 1
        out.problem(
            f"usage.completion_tokens {tokens}, ttc.sample_tokens {per_sample}; "
            f"expected {o.expected_tokens} ({o.k} x {min(o.tokens, o.max_tokens)})"
        )


async def _loop(
    session: aiohttp.ClientSession, o: LoadOptions, clients: int, duration_s: float
) -> LoadResult:
    out = LoadResult()
    one = _floor_request if o.mode == "floor" else _gateway_request
    stop_at = time.monotonic() + duration_s

    async def client() -> None:
        while time.monotonic() < stop_at:
            try:
                await one(session, o, out)
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                out.errors += 1
                out.problem(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    out.elapsed_s = time.perf_counter() - started
    return out


async def run(o: LoadOptions, clients: int, warmup_s: float, duration_s: float) -> LoadResult:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        if warmup_s > 0:
            warm = await _loop(session, o, clients, warmup_s)
            if warm.errors:
                print(orjson.dumps(asdict(warm)).decode(), flush=True)
                raise SystemExit(1)
        print("ready", flush=True)
        sys.stdin.readline()  # the parent reads the CPU counters, then says go
        return await _loop(session, o, clients, duration_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=("floor", "gateway"), required=True)
    parser.add_argument("--strategy", default="majority_vote")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--stream-options", default='{"include_usage": true}')
    args = parser.parse_args(argv)
    options = LoadOptions(
        url=args.url,
        mode=args.mode,
        strategy=args.strategy,
        k=args.k,
        tokens=args.tokens,
        max_tokens=args.max_tokens,
        stream_options=orjson.loads(args.stream_options),
    )
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(run(options, args.clients, args.warmup, args.duration))
    else:
        result = asyncio.run(run(options, args.clients, args.warmup, args.duration))
    print(orjson.dumps(asdict(result)).decode(), flush=True)


if __name__ == "__main__":
    main()
