"""Per-worker circuit breaker and retry before the first byte, against engine stand-ins that
answer ``/health`` but fail their completions."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from gateway.config import CircuitBreakerConfig
from tests.standin import SampleScript, Script, serve_standin
from tests.standin_fixtures import chat_body, pool_for, serve_gateway, sse_events

BREAKER = CircuitBreakerConfig(failures=2, cooldown_s=0.5)


@dataclasses.dataclass
class DroppingProxy:
    url: str
    drops: int = 0  # the next completion requests to drop
    after_s: float = 0.0  # how long the dropped request waits before its connection closes
    requests: bytes = b"POST /v1/"  # which requests are dropped: those starting so


@contextlib.asynccontextmanager
async def dropping_proxy(target: str) -> AsyncIterator[DroppingProxy]:
    """A TCP proxy to ``target`` that closes the connection, without an answer, on the next
    ``drops`` completion requests (a kept-alive connection the engine had just closed, or
    llama.cpp resetting connections under a burst); health checks and tokenizing pass."""
    host, port = urlsplit(target).hostname, urlsplit(target).port
    proxy = DroppingProxy("")

    async def pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if requests and data.startswith(proxy.requests) and proxy.drops > 0:
                    proxy.drops -= 1
                    await asyncio.sleep(proxy.after_s)
                    break
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield proxy


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


async def test_a_connection_dropped_before_any_answer_is_sent_once_more() -> None:
    """Dropped once: the call goes again and the client never knows (counted as ``dropped``,
    not against the worker). Dropped twice: the worker failed, a 502."""
    async with (
        serve_standin("vllm") as worker,
        dropping_proxy(worker.url) as proxy,
        serve_gateway(pool_for("vllm", proxy.url), circuit_breaker=BREAKER) as gw,
    ):
        proxy.drops = 1
        streamed = await gw.client.post("/v1/chat/completions", json=chat_body(stream=True))
        assert streamed.status_code == 200 and proxy.drops == 0
        assert sse_events(streamed.text)[-1] == "[DONE]"
        proxy.drops = 1
        whole = await gw.client.post("/v1/chat/completions", json=chat_body())
        assert whole.status_code == 200 and proxy.drops == 0
        assert whole.json()["choices"][0]["message"]["content"]
        assert len(worker.engine.requests) == 2  # the dropped calls never reached the engine
        assert await gw.metric("ttc_upstream_errors_total", kind="dropped") == 2
        assert (await circuit_states(gw.client))["pool-0"] == 0

        proxy.drops = 2
        failed = await gw.client.post("/v1/chat/completions", json=chat_body())
        assert failed.status_code == 502
        assert "pool-0 broke the connection" in failed.json()["error"]["message"]
        assert proxy.url.rsplit(":", 1)[1] not in failed.text  # no internal address
        assert await gw.metric("ttc_upstream_errors_total", kind="dropped") == 3
        assert await gw.metric("ttc_upstream_errors_total", kind="protocol") == 1

        served = await gw.client.post("/v1/chat/completions", json=chat_body())
        assert served.status_code == 200
        assert len(worker.engine.requests) == 3
        assert await gw.in_flight() == {proxy.url: 0}


async def test_a_non_streamed_call_dropped_after_a_while_is_not_sent_again() -> None:
    """Its answer comes only when it is done: dropped 0.4 s in, the engine may have run it, so
    it is the worker's failure (a 502), not a second generation. A stream dropped as late is
    sent again: its headers would have come as soon as the engine took it."""
    async with (
        serve_standin("vllm") as worker,
        dropping_proxy(worker.url) as proxy,
        serve_gateway(pool_for("vllm", proxy.url), circuit_breaker=BREAKER) as gw,
    ):
        proxy.drops, proxy.after_s = 1, 0.4
        whole = await gw.client.post("/v1/chat/completions", json=chat_body())
        assert whole.status_code == 502
        assert await gw.metric("ttc_upstream_errors_total", kind="dropped") == 0
        assert await gw.metric("ttc_upstream_errors_total", kind="protocol") == 1
        proxy.drops = 1
        streamed = await gw.client.post("/v1/chat/completions", json=chat_body(stream=True))
        assert streamed.status_code == 200 and proxy.drops == 0
        assert await gw.metric("ttc_upstream_errors_total", kind="dropped") == 1
        assert await gw.in_flight() == {proxy.url: 0}


async def test_a_template_rendering_dropped_before_any_answer_is_sent_once_more() -> None:
    """A thinking budget's continuation renders the chat with the engine's template on a
    connection that may have idled out: dropped once, it is sent again (it generates nothing);
    dropped twice, the sample fails with the worker named."""
    script = Script(
        samples=[SampleScript("The answer is 4.", thinking=" ".join(["w"] * 20))],
        reasoning="tags",
    )
    budget = {"X-TTC-Thinking-Budget": "4"}
    async with (
        serve_standin("llamacpp", script) as worker,
        dropping_proxy(worker.url) as proxy,
        serve_gateway(pool_for("llamacpp", proxy.url), circuit_breaker=BREAKER) as gw,
    ):
        proxy.requests, proxy.drops = b"POST /apply-template", 1
        once = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=budget)
        assert once.status_code == 200 and proxy.drops == 0
        assert once.json()["choices"][0]["message"]["content"] == "The answer is 4."
        proxy.drops = 2
        twice = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=budget)
        assert twice.status_code == 502
        assert "every sample of single failed upstream" in twice.json()["error"]["message"]
        assert proxy.url.rsplit(":", 1)[1] not in twice.text  # no internal address
        assert await gw.in_flight() == {proxy.url: 0}
