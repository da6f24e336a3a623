"""Every strategy end to end: the official ``openai`` SDK, the gateway, real llama.cpp.

In the embedded default one llama.cpp worker plays every role; here the session's worker does.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.llamacpp

QUESTION: list[Any] = [{"role": "user", "content": "What is 3 + 4? End with: The answer is N."}]


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
    if strategy == "majority_vote":  # aborts only once the vote cannot change
        assert (samples["aborted"] > 0) == report["decisions"]["settled_early"]
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


async def test_best_of_n_scores_candidates_with_the_judge_role(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        max_tokens=16,
        temperature=0.8,
        extra_headers={"X-TTC-Strategy": "best_of_n", "X-TTC-K": "3"},
    )
    report = (answer.model_extra or {})["ttc"]
    scores = report["decisions"]["scores"]
    assert len(scores) == 3 and all(0 <= s["score"] <= 9 for s in scores)
    assert report["samples"]["launched"] == 6  # 3 candidates + 3 one-token judge calls
    assert answer.usage is not None
    assert answer.usage.completion_tokens == sum(report["sample_tokens"])


@pytest.mark.parametrize("tau", ["0.0", "1.0"])
async def test_cascade_accepts_or_escalates(client: openai.AsyncOpenAI, tau: str) -> None:
    answer = await client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        max_tokens=16,
        temperature=1.0,
        extra_headers={"X-TTC-Strategy": "cascade", "X-TTC-K": "3", "X-TTC-Tau": tau},
    )
    decisions = (answer.model_extra or {})["ttc"]["decisions"]
    assert answer.choices[0].message.content
    if tau == "0.0":  # any parseable majority is accepted
        assert decisions["escalated"] is False or decisions["small"]["answer"] is None


async def test_spec_reason_streams_kept_steps(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        stream=True,
        extra_headers={
            "X-TTC-Strategy": "spec_reason",
            "X-TTC-Threshold": "5",
            "X-TTC-Max-Steps": "3",
            "X-TTC-Step-Tokens": "24",
        },
    )
    pieces: list[str] = []
    report: dict[str, Any] = {}
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        report = (chunk.model_extra or {}).get("ttc") or report
    steps = report["decisions"]["steps"]
    assert 1 <= len(steps) <= 3
    assert all(step["by"] in ("small", "large") for step in steps)
    assert len(pieces) >= len(steps)  # every kept step was sent as it was kept


async def test_a_budget_that_stops_every_sample_still_bills_the_prompt(
    client: openai.AsyncOpenAI, llamacpp: tuple[str, Any]
) -> None:
    """majority_vote k=4 with X-TTC-Max-Tokens-Total: 20 aborts every sample; its usage said
    ``prompt_tokens: 0`` although llama.cpp prefilled the prompt."""
    worker, _ = llamacpp
    raw = await client.chat.completions.with_raw_response.create(
        model="smollm2",
        messages=QUESTION,
        max_tokens=200,
        extra_body={"ignore_eos": True},  # no sample can finish under the budget
        extra_headers={
            "X-TTC-Strategy": "majority_vote",
            "X-TTC-K": "4",
            "X-TTC-Max-Tokens-Total": "20",
        },
    )
    answer = raw.parse()
    report = (answer.model_extra or {})["ttc"]
    assert report["truncated"] and report["samples"]["aborted"] == 4
    async with httpx.AsyncClient(base_url=worker, timeout=10) as http:
        prompt = (await http.post("/apply-template", json={"messages": QUESTION})).json()
        tokens = (await http.post("/tokenize", json={"content": prompt["prompt"]})).json()
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == len(tokens["tokens"])  # prefilled once for the 4
    assert report["estimated_prompt_tokens"] == 0  # llama.cpp said it with the first token
    assert 20 <= answer.usage.completion_tokens <= 20 + 4  # + the tokens in flight
