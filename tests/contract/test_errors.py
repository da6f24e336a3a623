"""The error contract: whatever a worker does, the client gets an OpenAI-style answer and the
gateway's per-worker in-flight count returns to zero."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.standin import SampleScript, Script, serve_standin
from tests.standin_fixtures import chat_body, pool_for, serve_gateway, sse_events


def assert_openai_error(body: dict, type_: str | None = None) -> dict:
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) >= {"message", "type", "param", "code"}
    if type_ is not None:
        assert error["type"] == type_
    return error


@pytest.mark.parametrize("stream", [False, True])
async def test_worker_500_is_502(stream: bool) -> None:
    script = Script(status=500, error_message="CUDA error: out of memory")
    async with (
        serve_standin("vllm", script) as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(stream=stream))
        assert response.status_code == 502
        error = assert_openai_error(response.json(), "upstream_error")
        assert "out of memory" in error["message"]
        assert await gw.in_flight() == {standin.url: 0}


@pytest.mark.parametrize("flavor", ["vllm", "sglang", "llamacpp", "openai"])
async def test_worker_400_passes_through_with_its_message(flavor: str) -> None:
    script = Script(status=400, error_message="This model's maximum context length is 2048")
    async with (
        serve_standin(flavor, script) as standin,
        serve_gateway(pool_for(flavor, standin.url)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 400
        error = assert_openai_error(response.json())
        assert error["message"] == "This model's maximum context length is 2048"
        assert await gw.in_flight() == {standin.url: 0}


@pytest.mark.parametrize("stream", [False, True])
async def test_worker_hang_is_504(stream: bool) -> None:
    async with (
        serve_standin("vllm", Script(hang=True)) as standin,
        serve_gateway(pool_for("vllm", standin.url, read_timeout_s=0.3)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(stream=stream))
        assert response.status_code == 504
        assert_openai_error(response.json(), "upstream_error")
        assert await gw.in_flight() == {standin.url: 0}
        # the gateway hung up, so the engine stops working on it
        await standin.engine.wait_until(lambda e: e.running == 0 and e.aborted == 1, 1.0)


async def test_deadline_header_bounds_the_wait_on_a_silent_worker() -> None:
    async with (
        serve_standin("vllm", Script(hang=True)) as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,  # read timeout: 300 s
    ):
        started = time.monotonic()
        response = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-TTC-Deadline-Ms": "300"}
        )
        waited = time.monotonic() - started
        assert response.status_code == 504
        assert 0.3 <= waited < 2.0
        assert await gw.in_flight() == {standin.url: 0}


async def test_worker_malformed_json_is_502() -> None:
    async with (
        serve_standin("vllm", Script(malformed=True)) as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 502
        assert_openai_error(response.json(), "upstream_error")
        assert await gw.in_flight() == {standin.url: 0}


async def test_malformed_stream_ends_with_error_event() -> None:
    async with (
        serve_standin("vllm", Script(malformed=True)) as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(stream=True))
        events = sse_events(response.text)
        assert events[-1] == "[DONE]"
        assert_openai_error(events[-2])
        assert await gw.in_flight() == {standin.url: 0}


async def test_unreachable_worker_fails_over_to_healthy_one() -> None:
    async with serve_standin("vllm") as healthy:
        async with serve_standin("vllm") as doomed:
            dead_url = doomed.url
            gateway = serve_gateway(pool_for("vllm", dead_url, healthy.url))
            gw = await gateway.__aenter__()
        try:
            assert (await gw.workers())[dead_url]["healthy"] is True  # the gateway does not know
            answers = [
                await gw.client.post("/v1/chat/completions", json=chat_body()) for _ in range(4)
            ]
            assert [a.status_code for a in answers] == [200] * 4
            assert len(healthy.engine.requests) == 4
            workers = await gw.workers()
            assert workers[dead_url]["healthy"] is False
            assert workers[healthy.url]["healthy"] is True
            assert await gw.in_flight() == {dead_url: 0, healthy.url: 0}
        finally:
            await gateway.__aexit__(None, None, None)


async def test_stream_that_dies_mid_way_ends_with_error_event() -> None:
    script = Script.text("one two three four five six seven eight")
    script.die_after_chunks = 4
    async with (
        serve_standin("vllm", script) as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(stream=True))
        assert response.status_code == 200
        events = sse_events(response.text)
        assert events[-1] == "[DONE]"
        error = assert_openai_error(events[-2])
        assert error["code"] == "stream_interrupted"
        text = "".join(c["delta"].get("content") or "" for e in events[:-2] for c in e["choices"])
        assert text == "one two three"  # what was relayed before the break
        assert await gw.in_flight() == {standin.url: 0}


async def test_stream_that_ends_without_done_is_reported() -> None:
    script = Script.text("one two three four five six seven eight")
    script.die_after_chunks = 4
    script.die_cleanly = True
    async with (
        serve_standin("vllm", script) as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(stream=True))
        events = sse_events(response.text)
        assert events[-1] == "[DONE]"
        assert_openai_error(events[-2])
        assert await gw.in_flight() == {standin.url: 0}


async def test_stream_that_stalls_mid_way_ends_with_timeout_event() -> None:
    script = Script(
        samples=[SampleScript("one two three", first_token_delay_s=0.0, token_delay_s=3.0)]
    )
    async with (
        serve_standin("vllm", script) as standin,
        serve_gateway(pool_for("vllm", standin.url, read_timeout_s=0.3)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(stream=True))
        events = sse_events(response.text)
        assert events[-1] == "[DONE]"
        assert_openai_error(events[-2], "upstream_error")
        assert [c["delta"].get("content") for c in events[-3]["choices"]] == ["one"]
        assert await gw.in_flight() == {standin.url: 0}
        await standin.engine.wait_until(lambda e: e.running == 0 and e.aborted == 1, 1.0)


async def test_worker_429_is_429_with_retry_after() -> None:
    async with (
        serve_standin("vllm", Script(status=429, error_message="too many requests")) as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 429
        assert "retry-after" in response.headers
        assert "too many requests" in assert_openai_error(response.json())["message"]
        assert await gw.in_flight() == {standin.url: 0}


@pytest.mark.parametrize("flavor", ["vllm", "llamacpp"])
async def test_non_streaming_client_disconnect_aborts_generation(flavor: str) -> None:
    slow = Script.text(" ".join(f"w{i}" for i in range(200)), token_delay_s=0.01)
    async with (
        serve_standin(flavor, slow) as standin,
        serve_gateway(pool_for(flavor, standin.url)) as gw,
    ):
        # n=2 sends llama.cpp down the gateway's streamed-upstream path
        with pytest.raises(httpx.ReadTimeout):
            await gw.client.post("/v1/chat/completions", json=chat_body(n=2), timeout=0.3)
        await standin.engine.wait_until(lambda e: e.running == 0 and e.aborted == 1, 1.0)
        assert await gw.in_flight() == {standin.url: 0}


async def test_sglang_non_streaming_client_disconnect_calls_abort_request() -> None:
    slow = Script.text(" ".join(f"w{i}" for i in range(200)), token_delay_s=0.01)
    async with (
        serve_standin("sglang", slow) as standin,
        serve_gateway(pool_for("sglang", standin.url)) as gw,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await gw.client.post(
                "/v1/chat/completions",
                json=chat_body(),
                headers={"X-Request-Id": "req-sgl-3"},
                timeout=0.3,
            )
        await standin.engine.wait_until(lambda e: e.abort_requests == ["req-sgl-3"], 1.0)
