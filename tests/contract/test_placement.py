"""Where a request's k samples go: one request with ``n=k`` on one worker while it has room for
all k, split over workers only when it has not (``max_sequences``), never for sticky steps
(which are split into requests of at most ``max_sequences`` on their worker)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.config import EngineKind, PoolConfig, WorkerConfig
from gateway.pipeline.sampler import BudgetGuard, PoolSampler
from gateway.upstream.client import RequestContext
from strategies.sampling import SampleRequest
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


async def test_separate_samples_go_one_request_each_to_one_worker_and_stop_alone() -> None:
    """``SampleRequest.separate`` (strategies that kill single traces): k requests with n=1,
    all on the worker the first one went to, and cancelling one closes its request only."""
    slow = Script.text("one two three four five six seven eight", token_delay_s=0.05)
    async with (
        serve_standin("vllm", slow) as a,
        serve_standin("vllm", slow) as b,
        serve_gateway(pool(a.url, b.url, max_sequences=8)) as gw,
    ):
        state = gw.app.state.gateway
        ctx = RequestContext(request_id="sep", endpoint="chat", strategy="deepconf")
        guard = BudgetGuard(deadline=time.perf_counter() + 30)
        sampler = PoolSampler(state.pools, state.upstream, ctx, PUBLIC_MODEL, guard)
        request = SampleRequest(
            messages=chat_body()["messages"], params={"max_tokens": 8}, separate=True
        )
        batch = await sampler.start(request, 3)
        served, idle = (a, b) if a.engine.requests else (b, a)
        assert [r.body["n"] for r in served.engine.requests] == [1, 1, 1]
        assert idle.engine.requests == []
        tokens = {0: 0, 1: 0, 2: 0}
        async for delta in batch.events():
            tokens[delta.sample] += delta.tokens
            if delta.sample == 1 and tokens[1] == 2:
                await batch.cancel([1])  # killed after its second token
        await sampler.close()
        assert tokens == {0: 8, 1: 2, 2: 8}
        await served.engine.wait_until(lambda e: e.running == 0, within_s=5)
        assert (served.engine.finished, served.engine.aborted) == (2, 1)
        assert sampler.sample_counts() == {"launched": 3, "finished": 2, "aborted": 1, "failed": 0}


async def test_a_sticky_batch_stays_on_its_worker_in_requests_it_can_take() -> None:
    """llama.cpp answers 400 to an ``n`` above its slots: a sticky batch larger than the
    workers' ``max_sequences`` goes to the sticky worker as several requests."""
    async with (
        serve_standin("vllm", Script.text("the answer is 7")) as a,
        serve_standin("vllm", Script.text("the answer is 7")) as b,
        serve_gateway(pool(a.url, b.url, max_sequences=2)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={"X-TTC-Strategy": "adaptive_consistency", "X-TTC-Wave": "5"},
        )
        placement = response.json()["ttc"]["placement"]
        assert [p["samples"] for p in placement] == [2, 2, 1]
        assert len({p["worker"] for p in placement}) == 1
        sent = [
            [r.body["n"] for r in s.engine.requests if r.path == "/v1/chat/completions"]
            for s in (a, b)
        ]
        assert sorted(sent) == [[], [2, 2, 1]]
