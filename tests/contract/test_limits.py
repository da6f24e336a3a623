"""Limits and pass-through fields: what a client notices at the edges."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.config import LimitsConfig, WorkerConfig
from tests.standin import Script, serve_standin
from tests.standin_fixtures import chat_body, pool_for, serve_gateway


async def test_oversized_body_is_413_declared_or_chunked() -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(
            pool_for("vllm", standin.url), limits=LimitsConfig(max_body_bytes=2048)
        ) as gw,
    ):
        big = chat_body("x" * 4000)
        declared = await gw.client.post("/v1/chat/completions", json=big)

        async def chunks() -> Any:
            for _ in range(10):
                yield b" " * 512  # JSON allows leading whitespace; the size alone must trip

        chunked = await gw.client.post(
            "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}
        )
    for response in (declared, chunked):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
    assert standin.engine.requests == []


async def test_malformed_json_and_invalid_utf8_are_400() -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        for body in (b'{"model": "m", "messages": [', b'{"model": "\xff\xfe"}', b""):
            response = await gw.client.post(
                "/v1/chat/completions",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code == 400, body
            assert response.json()["error"]["code"] == "invalid_json"


async def test_deeply_nested_json_is_400_and_never_reaches_the_worker() -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        nested: object = "deep"
        for _ in range(40):
            nested = {"x": [nested]}
        too_deep = chat_body(metadata=nested)
        response = await gw.client.post("/v1/chat/completions", json=too_deep)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "json_too_deep"
        beyond_orjson = b'{"model": "m", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}"
        response = await gw.client.post(
            "/v1/chat/completions",
            content=beyond_orjson,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"
        assert standin.engine.requests == []
        tools = [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "array", "items": {
                "type": "object", "properties": {"b": {"type": "string"}}}}}}}}]  # fmt: skip
        response = await gw.client.post("/v1/chat/completions", json=chat_body(tools=tools))
        assert response.status_code == 200  # a real tool schema nests well within the limit


async def test_cors_is_off_by_default() -> None:
    """No Access-Control-* headers: a browser page on another origin cannot call the gateway
    with a user's credentials unless a proxy in front of it allows that on purpose."""
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        origin = {"Origin": "https://evil.example"}
        preflight = await gw.client.options(
            "/v1/chat/completions",
            headers={**origin, "Access-Control-Request-Method": "POST"},
        )
        answer = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=origin)
        assert answer.status_code == 200
        for response in (preflight, answer):
            assert not any(h.lower().startswith("access-control-") for h in response.headers)


async def test_saturated_pool_is_429_with_retry_after_and_recovers() -> None:
    slow = Script.text("a b c d e f g h", token_delay_s=0.05)
    async with serve_standin("vllm", slow) as standin:
        pool = pool_for("vllm", standin.url).model_copy(
            update={"workers": [WorkerConfig(url=standin.url, max_in_flight=1)]}
        )
        async with serve_gateway(pool) as gw:
            first = asyncio.create_task(gw.client.post("/v1/chat/completions", json=chat_body()))
            await standin.engine.wait_until(lambda e: e.running == 1, 2.0)
            second = await gw.client.post("/v1/chat/completions", json=chat_body())
            assert second.status_code == 429
            assert second.headers["retry-after"] == "1"
            assert second.json()["error"]["code"] == "overloaded"
            assert (await first).status_code == 200
            assert await gw.in_flight() == {standin.url: 0}
            third = await gw.client.post("/v1/chat/completions", json=chat_body())
            assert third.status_code == 200


async def test_sampling_fields_and_tools_are_forwarded_unchanged() -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    fields = {
        "n": 2,
        "stop": ["\n\n"],
        "max_completion_tokens": 7,
        "temperature": 0.3,
        "top_p": 0.9,
        "seed": 11,
        "logprobs": True,
        "top_logprobs": 3,
        "tools": tools,
        "tool_choice": "auto",
        "top_k": 20,  # an engine extra
    }
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(**fields))
    assert response.status_code == 200, response.text
    upstream = standin.engine.requests[0].body
    assert {k: upstream[k] for k in fields} == fields


async def test_openapi_schema_documents_the_request_bodies() -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        schema = (await gw.client.get("/openapi.json")).json()
        strategies = (await gw.client.get("/v1/strategies")).json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    properties = schema["components"]["schemas"][ref]["properties"]
    assert {"messages", "model", "n", "stream", "ttc"} <= set(properties)
    assert "ChatMessage" in schema["components"]["schemas"]
    names = [s["name"] for s in strategies["data"]]
    assert names == [
        "single",
        "majority_vote",
        "first_finish",
        "short_m_at_k",
        "best_of_n",
        "cascade",
        "spec_reason",
        "adaptive_consistency",
        "deepconf",
        "glimp_router",
        "speculative_thinking",
    ]
