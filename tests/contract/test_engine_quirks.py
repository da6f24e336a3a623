"""Each engine adapter's quirk, seen through the gateway as a client would see it."""

from __future__ import annotations

import httpx
import pytest

from tests.standin import RunningStandin, SampleScript, Script
from tests.standin_fixtures import chat_body, pool_for, serve_gateway, sse_events

SLOW = Script.text(" ".join(f"w{i}" for i in range(400)), token_delay_s=0.01)


async def _read_chunks_then_leave(
    client: httpx.AsyncClient, body: dict, chunks: int, headers: dict[str, str] | None = None
) -> httpx.Headers:
    """Open a stream, read ``chunks`` data events, then close the connection."""
    seen = 0
    async with client.stream(
        "POST", "/v1/chat/completions", json=body, headers=headers or {}
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                seen += 1
                if seen >= chunks:
                    break
        return response.headers


# -- llama.cpp: usage counts one choice of n>1 ------------------------------------------------
THREE_SAMPLES = Script(
    samples=[SampleScript("one two"), SampleScript("a b c d e"), SampleScript("x y z")]
)


async def test_llamacpp_engine_under_reports_n3_usage(llamacpp: RunningStandin) -> None:
    """The stand-in reproduces the quirk the gateway corrects (choice 0 only)."""
    llamacpp.engine.script = THREE_SAMPLES
    async with httpx.AsyncClient(base_url=llamacpp.url) as client:
        answer = (await client.post("/v1/chat/completions", json=chat_body(n=3))).json()
    assert len(answer["choices"]) == 3
    assert answer["usage"]["completion_tokens"] == 2


async def test_llamacpp_n3_usage_counts_every_choice(llamacpp: RunningStandin) -> None:
    llamacpp.engine.script = THREE_SAMPLES
    async with serve_gateway(pool_for("llamacpp", llamacpp.url)) as gw:
        response = await gw.client.post("/v1/chat/completions", json=chat_body(n=3))
    assert response.status_code == 200
    answer = response.json()
    texts = [c["message"]["content"] for c in sorted(answer["choices"], key=lambda c: c["index"])]
    assert texts == ["one two", "a b c d e", "x y z"]
    assert answer["usage"]["completion_tokens"] == 2 + 5 + 3
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + 10


async def test_llamacpp_n3_streamed_usage_counts_every_choice(llamacpp: RunningStandin) -> None:
    llamacpp.engine.script = THREE_SAMPLES
    body = chat_body(n=3, stream=True, stream_options={"include_usage": True})
    async with serve_gateway(pool_for("llamacpp", llamacpp.url)) as gw:
        response = await gw.client.post("/v1/chat/completions", json=body)
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    usage_chunks = [e for e in events[:-1] if e.get("usage")]
    # llama.cpp sends one usage chunk per choice; the client gets one, counting all choices
    assert len(usage_chunks) == 1
    assert usage_chunks[0]["choices"] == []
    assert usage_chunks[0]["usage"]["completion_tokens"] == 10
    text = {i: "" for i in range(3)}
    for event in events[:-1]:
        for choice in event["choices"]:
            text[choice["index"]] += choice["delta"].get("content") or ""
    assert text == {0: "one two", 1: "a b c d e", 2: "x y z"}


# -- vLLM: continuous usage stats, abort on disconnect ------------------------------------------
async def test_vllm_upstream_asks_for_continuous_usage(vllm: RunningStandin) -> None:
    async with serve_gateway(pool_for("vllm", vllm.url)) as gw:
        response = await gw.client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.status_code == 200
    options = vllm.engine.bodies[-1]["stream_options"]
    assert options["continuous_usage_stats"] is True
    assert options["include_usage"] is True


async def test_vllm_per_chunk_usage_not_leaked_to_client(vllm: RunningStandin) -> None:
    body = chat_body(n=2, stream=True)
    async with serve_gateway(pool_for("vllm", vllm.url)) as gw:
        response = await gw.client.post("/v1/chat/completions", json=body)
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert len(events) > 3
    assert all("usage" not in e for e in events[:-1])


async def test_vllm_continuous_usage_kept_when_client_asks(vllm: RunningStandin) -> None:
    body = chat_body(
        stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True}
    )
    async with serve_gateway(pool_for("vllm", vllm.url)) as gw:
        response = await gw.client.post("/v1/chat/completions", json=body)
    events = sse_events(response.text)[:-1]
    assert all("usage" in e for e in events)
    assert events[-1]["choices"] == []


async def test_vllm_client_disconnect_aborts_generation(vllm: RunningStandin) -> None:
    vllm.engine.script = SLOW
    async with serve_gateway(pool_for("vllm", vllm.url)) as gw:
        await _read_chunks_then_leave(gw.client, chat_body(stream=True), chunks=3)
        await vllm.engine.wait_until(lambda e: e.running == 0 and e.aborted == 1, within_s=1.0)
        assert vllm.engine.finished == 0
        assert await gw.in_flight() == {vllm.url: 0}


# -- SGLang: rid and /abort_request ------------------------------------------------------------
async def test_sglang_rid_is_the_request_id(sglang: RunningStandin) -> None:
    async with serve_gateway(pool_for("sglang", sglang.url)) as gw:
        given = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-Request-Id": "req-sgl-1"}
        )
        generated = await gw.client.post("/v1/chat/completions", json=chat_body())
    assert given.status_code == generated.status_code == 200
    assert sglang.engine.bodies[0]["rid"] == "req-sgl-1"
    assert sglang.engine.bodies[1]["rid"] == generated.headers["x-request-id"]


async def test_sglang_client_disconnect_calls_abort_request(sglang: RunningStandin) -> None:
    sglang.engine.script = SLOW
    async with serve_gateway(pool_for("sglang", sglang.url)) as gw:
        await _read_chunks_then_leave(
            gw.client, chat_body(stream=True), chunks=3, headers={"X-Request-Id": "req-sgl-2"}
        )
        await sglang.engine.wait_until(lambda e: e.abort_requests == ["req-sgl-2"], within_s=1.0)
        await sglang.engine.wait_until(lambda e: e.running == 0 and e.aborted == 1, within_s=1.0)
        assert await gw.in_flight() == {sglang.url: 0}


@pytest.mark.parametrize("flavor", ["vllm", "sglang", "llamacpp", "openai"])
async def test_stop_sequence_is_cut_from_output(flavor: str) -> None:
    from tests.standin import serve_standin

    script = Script.text("The answer is 4. Done here.")
    async with (
        serve_standin(flavor, script) as standin,
        serve_gateway(pool_for(flavor, standin.url)) as gw,
    ):
        plain = await gw.client.post("/v1/chat/completions", json=chat_body(stop=[". Done"]))
        streamed = await gw.client.post(
            "/v1/chat/completions", json=chat_body(stop=". Done", stream=True)
        )
    choice = plain.json()["choices"][0]
    assert choice["message"]["content"] == "The answer is 4"
    assert choice["finish_reason"] == "stop"
    events = sse_events(streamed.text)[:-1]
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert text == "The answer is 4"
    assert [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]] == [
        "stop"
    ]
