"""The official ``openai`` SDK against the gateway, in front of a real llama.cpp worker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest

from tests.processes import (
    gateway_cli,
    llamacpp_pool,
    llamacpp_processing,
    llamacpp_worker,
    stop_process,
)

pytestmark = pytest.mark.llamacpp

MESSAGES: list[Any] = [{"role": "user", "content": "Write one sentence about the sea."}]


async def test_non_streaming_chat(client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="smollm2", messages=MESSAGES, max_tokens=12, extra_headers={"X-Request-Id": "abc-1"}
    )
    completion = raw.parse()
    assert raw.headers["x-request-id"] == "abc-1"
    assert completion.model == "smollm2"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 12
    assert completion.usage.prompt_tokens > 0


async def test_streaming_chat_counts_every_token(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="smollm2",
        messages=MESSAGES,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    usage = None
    finish = None
    async for chunk in stream:
        assert chunk.model == "smollm2"
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces)
    assert usage is not None
    # llama.cpp streams one token per chunk; a sample that ends by itself also generated the
    # end-of-sequence token, counted (as llamacpp:tokens_predicted_total counts it), not sent
    assert usage.completion_tokens == len(pieces) + (finish == "stop")


async def test_n_greater_than_one_reports_usage_of_all_choices(
    client: openai.AsyncOpenAI, llamacpp: tuple[str, Any]
) -> None:
    completion = await client.chat.completions.create(
        model="smollm2",
        messages=MESSAGES,
        max_tokens=10,
        n=3,
        temperature=1.0,
        logprobs=True,
    )
    assert len(completion.choices) == 3
    per_choice = []
    for choice in completion.choices:
        assert choice.logprobs is not None and choice.logprobs.content is not None
        per_choice.append(len(choice.logprobs.content))  # one logprob entry per token
    assert completion.usage is not None
    # a choice that ended at end of sequence also generated that token, which llama.cpp
    # counts (and the gateway bills) but does not stream
    stopped = sum(choice.finish_reason == "stop" for choice in completion.choices)
    assert completion.usage.completion_tokens == sum(per_choice) + stopped

    # The quirk this corrects: llama.cpp itself reports one choice's tokens.
    async with httpx.AsyncClient(timeout=60) as http:
        direct = await http.post(
            llamacpp[0] + "/v1/chat/completions",
            json={"messages": MESSAGES, "max_tokens": 10, "n": 3, "temperature": 1.0},
        )
    reported = direct.json()["usage"]["completion_tokens"]
    assert reported <= 10 < sum(per_choice)


async def test_streaming_n_greater_than_one(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="smollm2",
        messages=MESSAGES,
        max_tokens=8,
        n=2,
        temperature=1.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks_per_choice = {0: 0, 1: 0}
    stopped = 0  # choices ended at end of sequence: a token counted, not streamed
    usage = None
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                chunks_per_choice[choice.index] += 1
            stopped += choice.finish_reason == "stop"
        usage = chunk.usage or usage
    assert all(count > 0 for count in chunks_per_choice.values())
    assert usage is not None
    assert usage.completion_tokens == sum(chunks_per_choice.values()) + stopped


async def test_stop_sequence_ends_the_answer(client: openai.AsyncOpenAI) -> None:
    prompt = "Here are the numbers from one to ten: 1, 2, 3,"
    free = await client.completions.create(
        model="smollm2", prompt=prompt, max_tokens=12, temperature=0
    )
    text = free.choices[0].text
    assert len(text.strip()) > 2
    stop = text.strip()[1:3]  # a string the greedy answer is known to contain
    stopped = await client.completions.create(
        model="smollm2", prompt=prompt, max_tokens=12, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stop not in stopped.choices[0].text
    assert text.startswith(stopped.choices[0].text)


async def test_invalid_field_is_a_400_naming_it(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=7)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "temperature"
    assert error["type"] == "invalid_request_error"
    assert "temperature" in error["message"]


async def test_unknown_model_is_a_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-17", messages=MESSAGES)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model"


async def test_unknown_strategy_is_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="smollm2", messages=MESSAGES, extra_headers={"X-TTC-Strategy": "telepathy"}
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "unknown_strategy"


async def test_models_and_metrics(gateway_on_llamacpp: str, client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == ["smollm2"]
    await client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
    async with httpx.AsyncClient() as http:
        text = (await http.get(gateway_on_llamacpp + "/metrics")).text
    series = 'ttc_requests_total{endpoint="chat",model="smollm2",status="200",strategy="single"}'
    assert series in text
    assert "ttc_tokens_total" in text


async def test_client_disconnect_aborts_the_generation(
    gateway_on_llamacpp: str, llamacpp: tuple[str, Any]
) -> None:
    http = httpx.AsyncClient(timeout=30)
    async with http.stream(
        "POST",
        gateway_on_llamacpp + "/v1/chat/completions",
        json={
            "model": "smollm2",
            "messages": MESSAGES,
            "max_tokens": 2000,
            "stream": True,
            "n": 2,
            "temperature": 1.0,
            "ignore_eos": True,
        },
    ) as response:
        assert response.status_code == 200
        seen = 0
        async for line in response.aiter_lines():
            seen += line.startswith("data:")
            if seen >= 6:
                break
        assert await llamacpp_processing(http, llamacpp[0]) >= 1
    deadline = time.monotonic() + 2.0
    while await llamacpp_processing(http, llamacpp[0]) > 0:
        assert time.monotonic() < deadline, "llama.cpp still generating 2 s after the disconnect"
        await asyncio.sleep(0.05)
    await http.aclose()


def test_worker_down_is_a_clean_error_and_the_gateway_survives() -> None:
    with (
        llamacpp_worker(parallel=2, context=2048) as (worker_url, worker),
        gateway_cli({"server": {"log_level": "warning"}, "pools": [llamacpp_pool(worker_url)]}) as (
            url,
            _,
        ),
    ):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        ok = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
        assert ok.choices[0].message.content is not None
        stop_process(worker)
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
        assert caught.value.status_code in (502, 503)
        body = caught.value.body
        assert isinstance(body, dict) and "Traceback" not in body["message"]
        assert httpx.get(url + "/health").status_code == 200
        ready = httpx.get(url + "/ready")
        assert ready.status_code == 503
        assert ready.json()["pools"][0]["workers"][0]["in_flight"] == 0
