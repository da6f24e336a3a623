"""GlimpRouter and Speculative Thinking end to end: the official ``openai`` SDK, the gateway, the
session's real llama.cpp worker playing both the small and the large role.

The thinking comes back as ``reasoning_content`` (streamed before the answer), equal to the kept
steps the report lists, and ``usage`` bills every call: kept steps, glimpses or probes that were
not kept, and the answer.
"""

from __future__ import annotations

import math
from typing import Any

import openai
import pytest

pytestmark = pytest.mark.llamacpp

# Short paragraphs, so that the steps end at blank lines and the probes run.
QUESTION: list[Any] = [
    {
        "role": "user",
        "content": "Answer each in its own paragraph, starting with Yes or No: "
        "Is 2 even? Is 3 even? Is 4 even?",
    }
]
FAST = {"X-TTC-Step-Tokens": "16", "X-TTC-Token-Budget": "96", "X-TTC-Answer-Tokens": "16"}
STRATEGIES = {
    "glimp_router": {**FAST, "X-TTC-Max-Steps": "3"},
    "speculative_thinking": {**FAST, "X-TTC-Max-Steps": "5", "X-TTC-Probe-Tokens": "4"},
}


def kept(decisions: dict[str, Any]) -> str:
    return "\n\n".join(s["text"] for s in decisions["steps"] if s["text"])


def streamed(decisions: dict[str, Any]) -> int:
    """Every token the report says was streamed: kept, glimpsed or probed, answered."""
    unkept = sum(s.get("glimpse_tokens", 0) + s.get("probe_tokens", 0) for s in decisions["steps"])
    return int(decisions["kept_tokens"] + unkept + decisions["answer_tokens"])


def check_billed(usage: Any, report: dict[str, Any]) -> None:
    """The usage is what llama.cpp counted for each call: what the strategy saw streamed, plus
    the token each call ended on where it stopped by itself (the "\n\n" stop string or the
    end of sequence), which llama.cpp generates and counts but does not stream."""
    calls = report["samples"]["launched"]
    seen = streamed(report["decisions"])
    assert usage.completion_tokens == sum(report["sample_tokens"])
    assert seen <= usage.completion_tokens <= seen + calls
    # the kept steps are the thinking
    assert usage.completion_tokens_details.reasoning_tokens == report["decisions"]["kept_tokens"]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
async def test_the_thinking_is_the_kept_steps_and_usage_bills_every_call(
    client: openai.AsyncOpenAI, strategy: str
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="smollm2",
        messages=QUESTION,
        temperature=0.0,
        extra_headers={"X-TTC-Strategy": strategy, **STRATEGIES[strategy]},
    )
    assert raw.status_code == 200
    answer = raw.parse()
    message = answer.choices[0].message
    report = (answer.model_extra or {})["ttc"]
    decisions = report["decisions"]
    assert 1 <= len(decisions["steps"]) <= 5
    assert (message.model_extra or {})["reasoning_content"] == kept(decisions)
    assert message.content and decisions["answer_tokens"] > 0
    assert decisions["kept_tokens"] == sum(s["tokens"] for s in decisions["steps"])
    assert answer.usage is not None
    check_billed(answer.usage, report)
    if strategy == "glimp_router":  # llama.cpp returned the glimpse's top-20 alternatives
        for step in decisions["steps"]:
            assert step["entropy"] is not None and 0 <= step["entropy"] <= math.log(20) + 1e-6
            assert step["by"] == ("large" if step["entropy"] >= 1.0 else "small")
        assert report["samples"]["launched"] == 2 * len(decisions["steps"]) + 1


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
async def test_the_thinking_streams_before_the_answer(
    client: openai.AsyncOpenAI, strategy: str
) -> None:
    stream = await client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-TTC-Strategy": strategy, **STRATEGIES[strategy]},
    )
    order: list[str] = []
    reasoning, content = "", ""
    report: dict[str, Any] = {}
    usage = None
    async for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            thought = (delta.model_extra or {}).get("reasoning_content")
            if thought:
                order.append("reasoning")
                reasoning += thought
            if delta.content:
                order.append("content")
                content += delta.content
        report = (chunk.model_extra or {}).get("ttc") or report
        usage = chunk.usage or usage
    decisions = report["decisions"]
    assert reasoning and reasoning == kept(decisions)
    assert content
    assert order == sorted(order, key=lambda field: field == "content")  # thinking first
    assert order.count("reasoning") >= 1 and order[-1] == "content"
    assert usage is not None
    check_billed(usage, report)
