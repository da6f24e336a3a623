"""Every strategy end to end: the official ``openai`` SDK, the gateway, real llama.cpp.

In the embedded default one llama.cpp worker plays every role; here the session's worker does.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

pytestmark = pytest.mark.llamacpp

QUESTION: list[Any] = [{"role": "user", "content": "What is 3 + 4? End with: The answer is N."}]


@pytest.fixture
def client(gateway_on_llamacpp: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=gateway_on_llamacpp + "/v1", api_key="unused", max_retries=0, timeout=120
    )


@pytest.mark.parametrize(
    ("strategy", "headers"),
    [
        ("majority_vote", {"X-TTC-K": "4"}),
        ("first_finish", {"X-TTC-K": "4"}),
        ("short_m_at_k", {"X-TTC-K": "4", "X-TTC-M": "2"}),
    ],
)
async def test_strategy_answers_and_accounts(
    client: openai.AsyncOpenAI, strategy: str, headers: dict[str, str]
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="smollm2",
        messages=QUESTION,
        max_tokens=48,
        temperature=0.8,
        extra_headers={"X-TTC-Strategy": strategy, **headers},
    )
    answer = raw.parse()
    assert answer.choices[0].message.content
    report = (answer.model_extra or {})["ttc"]
    assert report["strategy"] == strategy
    samples = report["samples"]
    assert samples["launched"] == 4
    assert samples["finished"] + samples["aborted"] + samples["failed"] == 4
    assert answer.usage is not None
    assert answer.usage.completion_tokens == sum(report["sample_tokens"])
    assert raw.headers["x-ttc-samples-launched"] == "4"
    if strategy == "majority_vote":
        assert samples["aborted"] == 0
    if strategy == "short_m_at_k" and samples["aborted"]:
        assert len(report["decisions"]["done"]) == 2


async def test_strategy_streams_the_decided_answer(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        max_tokens=48,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-TTC-Strategy": "first_finish", "X-TTC-K": "3"},
    )
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces)
    assert usage is not None and usage.completion_tokens > 0
