"""Per-worker circuit breaker and retry before the first byte, against engine stand-ins that
answer ``/health`` but fail their completions."""

from __future__ import annotations

import asyncio

from gateway.config import CircuitBreakerConfig
from tests.standin import Script, serve_standin
from tests.standin_fixtures import chat_body, pool_for, serve_gateway, sse_events

BREAKER = CircuitBreakerConfig(failures=2, cooldown_s=0.5)


async def circuit_states(client: object) -> dict[str, float]:
    text = (await client.get("/metrics")).text  # type: ignore[attr-defined]
    states = {}
    for line in text.splitlines():
        if line.startswith("ttc_worker_circuit_state{"):
            labels, value = line.rsplit(" ", 1)
            worker = labels.split('worker="', 1)[1].split('"', 1)[0]
            states[worker] = float(value)
    return states


async def test_a_worker_answering_500_is_retried_elsewhere_then_left_out() -> None:
    async with (
        serve_standin("vllm", Script(status=500, error_message="CUDA error")) as failing,
        serve_standin("vllm") as good,
        serve_gateway(pool_for("vllm", failing.url, good.url), circuit_breaker=BREAKER) as gw,
    ):
        answers = [
            await gw.client.post("/v1/chat/completions", json=chat_body(stream=stream))
            for stream in (False, True) * 4
        ]
        assert [a.status_code for a in answers] == [200] * 8  # no client saw the 500s
        assert all(sse_events(a.text)[-1] == "[DONE]" for a in answers[1::2])
        assert len(failing.engine.requests) == BREAKER.failures  # then its circuit opened
        assert len(good.engine.requests) == 8
        states = await circuit_states(gw.client)
        # workers are named by pool and position, never by address
        assert states == {"pool-0": 2, "pool-1": 0}
        assert await gw.in_flight() == {failing.url: 0, good.url: 0}


async def test_an_open_circuit_answers_503_then_one_probe_closes_it_when_healed() -> None:
    async with (
        serve_standin("vllm", Script(malformed=True)) as worker,
        serve_gateway(pool_for("vllm", worker.url), circuit_breaker=BREAKER) as gw,
    ):
        statuses = [
            (await gw.client.post("/v1/chat/completions", json=chat_body())).status_code
            for _ in range(2)
        ]
        assert statuses == [502, 502]
        refused = await gw.client.post("/v1/chat/completions", json=chat_body())
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "circuit_open"
        assert refused.headers["retry-after"] == "1"
        assert len(worker.engine.requests) == 2  # nothing was sent while open

        worker.engine.script = Script()  # the worker heals
        await asyncio.sleep(BREAKER.cooldown_s)  # the cooldown is time, nothing to await
        probe, after = await asyncio.gather(
            gw.client.post("/v1/chat/completions", json=chat_body()),
            gw.client.post("/v1/chat/completions", json=chat_body()),
        )
        # one probe at a time: the second request, sent with it, is refused or served after
        assert probe.status_code == 200
        assert after.status_code in (200, 503)
        served = [
            (await gw.client.post("/v1/chat/completions", json=chat_body())).status_code
            for _ in range(3)
        ]
        assert served == [200] * 3
        assert (await circuit_states(gw.client))["pool-0"] == 0


async def test_a_client_error_does_not_count_against_the_worker() -> None:
    async with (
        serve_standin("vllm", Script(status=400, error_message="context too long")) as worker,
        serve_gateway(pool_for("vllm", worker.url), circuit_breaker=BREAKER) as gw,
    ):
        statuses = [
            (await gw.client.post("/v1/chat/completions", json=chat_body())).status_code
            for _ in range(4)
        ]
        assert statuses == [400] * 4
        assert (await circuit_states(gw.client))["pool-0"] == 0
