"""Clients that leave at random moments, across every strategy, streamed and not.

A real llama.cpp worker behind the real gateway CLI. Each try sends a request and drops the
connection after a random delay (seeded, so a failure can be replayed); whatever the moment
(before the first sample, mid-vote, between spec_reason's steps, after the answer):

- the gateway has closed every upstream request (nothing in flight on the worker, as /ready
  counts it) within 1 s of the disconnect;
- llama.cpp has nothing running within 1 s more: it notices a closed connection at its next
  token, or, while it waits for a request's first token (prefill), when it polls the
  connection, once a second (``HTTP_POLLING_SECONDS`` in its server), so an abort before the
  first token takes it up to a second;
- the gateway's log has no "Task was destroyed" and no unhandled traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import gateway_cli, llamacpp_pool, llamacpp_processing

pytestmark = pytest.mark.llamacpp

STRATEGIES: list[tuple[str, dict[str, str]]] = [
    ("single", {}),
    ("majority_vote", {"X-TTC-K": "4"}),
    ("first_finish", {"X-TTC-K": "4"}),
    ("short_m_at_k", {"X-TTC-K": "4", "X-TTC-M": "2"}),
    ("best_of_n", {"X-TTC-K": "3"}),
    ("cascade", {"X-TTC-K": "3", "X-TTC-Tau": "1.0"}),
    ("spec_reason", {"X-TTC-Step-Tokens": "16", "X-TTC-Max-Steps": "4"}),
]
ROUNDS = 4  # 7 strategies x streamed or not x 4 = 56 tries
SEED = 20261202
RELEASED_WITHIN_S = 1.0  # the gateway's part
ENGINE_POLL_S = 1.0  # llama.cpp's HTTP_POLLING_SECONDS
IDLE_WITHIN_S = RELEASED_WITHIN_S + ENGINE_POLL_S
QUESTION = [{"role": "user", "content": "Count slowly from one to forty, one number a line."}]


async def _in_flight(http: httpx.AsyncClient, gateway: str) -> int:
    ready = (await http.get(gateway + "/ready")).json()
    return sum(w["in_flight"] for pool in ready["pools"] for w in pool["workers"])


async def _leave_after(
    gateway: str, body: dict[str, Any], headers: dict[str, str], delay: float
) -> None:
    """Send the request and drop the connection ``delay`` seconds later (or when done)."""
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:

        async def send() -> None:
            if body.get("stream"):
                async with client.stream(
                    "POST", "/v1/chat/completions", json=body, headers=headers
                ) as response:
                    async for _ in response.aiter_raw():
                        pass
            else:
                await client.post("/v1/chat/completions", json=body, headers=headers)

        with contextlib.suppress(TimeoutError):  # then the client is gone: connection closed
            await asyncio.wait_for(send(), delay)


def test_random_disconnects_leave_nothing_running(llamacpp: tuple[str, Any]) -> None:
    worker, _ = llamacpp
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "gateway.log"
        config = {"server": {"log_level": "info"}, "pools": [llamacpp_pool(worker)]}
        with gateway_cli(config, log=log) as (gateway, _):
            slow: list[str] = []
            held: list[str] = []

            async def run() -> None:
                async with httpx.AsyncClient(timeout=10) as http:
                    tries = [
                        (name, headers, stream)
                        for _ in range(ROUNDS)
                        for name, headers in STRATEGIES
                        for stream in (False, True)
                    ]
                    rng.shuffle(tries)
                    for i, (name, params, stream) in enumerate(tries):
                        delay = rng.uniform(0.0, 1.5)
                        body = {
                            "model": "smollm2",
                            "messages": QUESTION,
                            "max_tokens": 96,
                            "temperature": 0.8,
                            "stream": stream,
                        }
                        headers = {"X-TTC-Strategy": name, "X-Request-Id": f"try-{i}", **params}
                        await _leave_after(gateway, body, headers, delay)
                        left = time.monotonic()
                        what = f"try-{i} {name} stream={stream} left after {delay:.2f}s"
                        while await _in_flight(http, gateway):
                            if time.monotonic() - left > RELEASED_WITHIN_S:
                                held.append(what)
                                break
                            await asyncio.sleep(0.01)
                        while await llamacpp_processing(http, worker) > 0:
                            if time.monotonic() - left > IDLE_WITHIN_S:
                                slow.append(what)
                                break
                            await asyncio.sleep(0.02)
                        # wait it out before the next try, so one slow abort is not blamed
                        # on the next request
                        deadline = time.monotonic() + 30
                        while time.monotonic() < deadline:
                            if await llamacpp_processing(http, worker) == 0:
                                break
                            await asyncio.sleep(0.05)
                    assert await _in_flight(http, gateway) == 0

            asyncio.run(run())
            time.sleep(0.5)
        text = log.read_text(errors="replace")
    assert not held, f"upstream requests still open {RELEASED_WITHIN_S} s after: {held}"
    assert not slow, f"llama.cpp still busy {IDLE_WITHIN_S} s after the client left: {slow}"
    assert "Task was destroyed" not in text, text[-5000:]
    assert "Traceback" not in text, text[-5000:]
    assert text.count('"POST /v1/chat/completions"') == ROUNDS * len(STRATEGIES) * 2
