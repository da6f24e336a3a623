"""Where a request's k samples go: one request with ``n=k`` on one worker while it has room for
all k, split over workers only when it has not (``max_sequences``), never for sticky steps."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.config import EngineKind, PoolConfig, WorkerConfig
from tests.standin import Script, serve_standin
from tests.standin_fixtures import ENGINE_MODEL, PUBLIC_MODEL, chat_body, serve_gateway


def pool(*urls: str, max_sequences: int | None) -> PoolConfig:
    return PoolConfig(
        name="pool",
        engine=EngineKind.VLLM,
        model=PUBLIC_MODEL,
        upstream_model=ENGINE_MODEL,
        workers=[WorkerConfig(url=u, max_sequences=max_sequences) for u in urls],
    )


def vote(k: int) -> dict[str, Any]:
    return {"X-TTC-Strategy": "majority_vote", "X-TTC-K": str(k)}


async def test_k_samples_stay_in_one_request_while_one_worker_has_room() -> None:
    async with (
        serve_standin("vllm") as a,
        serve_standin("vllm") as b,
        serve_gateway(pool(a.url, b.url, max_sequences=8)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=vote(8))
        placement = response.json()["ttc"]["placement"]
        assert [p["samples"] for p in placement] == [8]
        assert sorted(len(s.engine.requests) for s in (a, b)) == [0, 1]


async def test_k_samples_are_split_when_no_worker_can_take_them_all() -> None:
    async with (
        serve_standin("vllm") as a,
        serve_standin("vllm") as b,
        serve_gateway(pool(a.url, b.url, max_sequences=4)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=vote(8))
        ttc = response.json()["ttc"]
        assert sorted(p["samples"] for p in ttc["placement"]) == [4, 4]
        assert {p["worker"] for p in ttc["placement"]} == {"pool-0", "pool-1"}
        assert [r.body["n"] for r in a.engine.requests + b.engine.requests] == [4, 4]
        assert ttc["samples"]["launched"] == 8 and sum(ttc["votes"].values()) == 8


async def test_a_busy_worker_sends_the_next_request_to_the_free_one() -> None:
    slow = Script.text("one two three four five six", token_delay_s=0.2)
    async with (
        serve_standin("vllm", slow) as a,
        serve_standin("vllm", slow) as b,
        serve_gateway(pool(a.url, b.url, max_sequences=8)) as gw,
    ):
        first = asyncio.create_task(
            gw.client.post("/v1/chat/completions", json=chat_body(), headers=vote(6))
        )
        for _ in range(500):  # until the first request reached its worker
            if a.engine.requests or b.engine.requests:
                break
            await asyncio.sleep(0.01)
        busy, free = (a, b) if a.engine.requests else (b, a)
        second = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=vote(4))
        assert [p["samples"] for p in second.json()["ttc"]["placement"]] == [4]
        assert [r.body["n"] for r in free.engine.requests] == [4]  # 2 free on the busy one
        assert [r.body["n"] for r in busy.engine.requests] == [6]
        assert (await first).status_code == 200


async def test_without_max_sequences_nothing_is_split() -> None:
    async with (
        serve_standin("vllm") as a,
        serve_standin("vllm") as b,
        serve_gateway(pool(a.url, b.url, max_sequences=None)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=vote(16))
        assert [p["samples"] for p in response.json()["ttc"]["placement"]] == [16]
