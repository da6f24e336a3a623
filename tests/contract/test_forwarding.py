"""What the gateway forwards upstream and what it rewrites on the way back."""

from __future__ import annotations

import openai
import pytest

from tests.standin import Script, serve_standin
from tests.standin_fixtures import (
    ENGINE_MODEL,
    PUBLIC_MODEL,
    chat_body,
    pool_for,
    serve_gateway,
    sse_events,
)

FLAVORS = ["vllm", "sglang", "llamacpp", "openai"]


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_model_name_is_the_public_one(flavor: str) -> None:
    """The engine sees its own model name; the client only ever sees the pool's."""
    async with (
        serve_standin(flavor, Script.text("Four.")) as standin,
        serve_gateway(pool_for(flavor, standin.url)) as gw,
    ):
        sdk = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0)
        completion = await sdk.chat.completions.create(
            model=PUBLIC_MODEL, messages=[{"role": "user", "content": "2+2?"}], n=2
        )
        stream = await sdk.chat.completions.create(
            model=PUBLIC_MODEL,
            messages=[{"role": "user", "content": "2+2?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        text = await sdk.completions.create(model=PUBLIC_MODEL, prompt="2+2=")
        await sdk.close()
    assert completion.model == PUBLIC_MODEL
    assert [c.message.content for c in completion.choices] == ["Four.", "Four."]
    assert chunks and all(c.model == PUBLIC_MODEL for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Four."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 1
    assert text.model == PUBLIC_MODEL
    assert text.choices[0].text == "Four."
    upstream_models = {b["model"] for b in standin.engine.bodies}
    assert upstream_models == {ENGINE_MODEL}


async def test_control_fields_and_client_headers_stay_at_the_gateway() -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url, api_key="worker-key")) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(ttc={"strategy": "single"}, temperature=0.5),
            headers={
                "Authorization": "Bearer sk-client-secret",
                "X-TTC-Strategy": "single",
            },
        )
    assert response.status_code == 200
    (received,) = standin.engine.requests
    assert "ttc" not in received.body
    assert received.body["temperature"] == 0.5  # ordinary fields do go through
    assert received.headers.get("authorization") == "Bearer worker-key"
    assert not [h for h in received.headers if h.startswith("x-ttc-")]
    assert "sk-client-secret" not in str(received.headers)


@pytest.mark.parametrize(
    "header", ["X-TTC-Max-Tokens-Total", "X-TTC-Max-Cost-USD", "X-TTC-Deadline-Ms"]
)
async def test_budget_headers_are_accepted_and_not_forwarded(header: str) -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={header: "5000"}
        )
    assert response.status_code == 200, response.text
    assert not [h for h in standin.engine.requests[0].headers if h.startswith("x-ttc-")]


async def test_token_budget_is_shared_by_the_samples() -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json={**chat_body(), "n": 4, "max_tokens": 100},
            headers={"X-TTC-Max-Tokens-Total": "40"},
        )
        too_small = await gw.client.post(
            "/v1/chat/completions",
            json={**chat_body(), "n": 4},
            headers={"X-TTC-Max-Tokens-Total": "3"},
        )
    assert response.status_code == 200, response.text
    assert standin.engine.requests[0].body["max_tokens"] == 10
    assert too_small.status_code == 400
    assert too_small.json()["error"]["param"] == "X-TTC-Max-Tokens-Total"


async def test_bad_budget_is_a_400_naming_the_header() -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-TTC-Deadline-Ms": "soon"}
        )
        in_body = await gw.client.post(
            "/v1/chat/completions", json={**chat_body(), "ttc": {"deadline_ms": 0}}
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "X-TTC-Deadline-Ms"
    assert in_body.json()["error"]["param"] == "ttc.deadline_ms"


async def test_client_authorization_not_forwarded_without_pool_key() -> None:
    async with (
        serve_standin("openai") as standin,
        serve_gateway(pool_for("openai", standin.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={"Authorization": "Bearer sk-client-secret"},
        )
    assert response.status_code == 200
    assert "authorization" not in standin.engine.requests[0].headers


async def test_request_id_is_echoed_or_generated() -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        given = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-Request-Id": "client-id-42"}
        )
        generated = await gw.client.post("/v1/chat/completions", json=chat_body())
        streamed = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(stream=True),
            headers={"X-Request-Id": "client-id-43"},
        )
        failed = await gw.client.post(
            "/v1/chat/completions",
            json={**chat_body(), "model": "no-such-model"},
            headers={"X-Request-Id": "client-id-44"},
        )
    assert given.headers["x-request-id"] == "client-id-42"
    assert len(generated.headers["x-request-id"]) >= 16
    assert generated.headers["x-request-id"] != "client-id-42"
    assert streamed.headers["x-request-id"] == "client-id-43"
    assert sse_events(streamed.text)[-1] == "[DONE]"
    assert failed.status_code == 404
    assert failed.headers["x-request-id"] == "client-id-44"
