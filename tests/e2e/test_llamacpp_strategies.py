"""Every strategy end to end: the official ``openai`` SDK, the gateway, real llama.cpp.

In the embedded default one llama.cpp worker plays every role; here the session's worker does.
"""

from __future__ import annotations

import math
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


def beta_by_binomial(v1: int, v2: int) -> float:
    """P(p1 > p2) under Beta(v1+1, v2+1), in closed form: P(Binomial(v1+v2+1, 1/2) <= v1)."""
    n = v1 + v2 + 1
    return sum(math.comb(n, j) for j in range(v1 + 1)) / 2**n


@pytest.mark.parametrize("stop_rule", ["beta", "esc"])
async def test_adaptive_consistency_samples_in_waves_until_its_rule_stops(
    client: openai.AsyncOpenAI, stop_rule: str
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="smollm2",
        messages=QUESTION,
        max_tokens=32,
        temperature=0.8,
        extra_headers={
            "X-TTC-Strategy": "adaptive_consistency",
            "X-TTC-K": "8",
            "X-TTC-Wave": "2",
            "X-TTC-Stop-Rule": stop_rule,
        },
    )
    answer = raw.parse()
    report = (answer.model_extra or {})["ttc"]
    decisions, samples = report["decisions"], report["samples"]
    assert samples["launched"] == decisions["launched"] == 2 * decisions["waves"] <= 8
    assert raw.headers["x-ttc-samples-launched"] == str(samples["launched"])
    assert [p["samples"] for p in report["placement"]] == [2] * decisions["waves"]
    checks = decisions["checks"]
    if stop_rule == "beta":  # stopped at the first check that reached 0.95, or ran to k
        for check in checks:
            assert check["p"] == pytest.approx(beta_by_binomial(*check["top"]), abs=1e-6)
        reached = [check["p"] >= 0.95 for check in checks]
        assert decisions["stopped"] == ("consensus" if any(reached) else "k")
        assert not any(reached[:-1])
    else:  # stopped at the first unanimous wave, or ran to k
        unanimous = [check["unanimous"] for check in checks]
        assert decisions["stopped"] == ("consensus" if any(unanimous) else "k")
        assert not any(unanimous[:-1])
    if decisions["stopped"] == "k":
        assert samples["launched"] == 8
    assert answer.usage is not None
    assert answer.usage.completion_tokens == sum(report["sample_tokens"])


async def test_deepconf_reads_streamed_top_logprobs_and_kills_traces_below_the_bar(
    client: openai.AsyncOpenAI,
) -> None:
    """With eta 1 the bar is about the best warm-up trace's lowest window: later traces are
    killed the moment a window of 4 tokens falls below it. A prompt without a number to
    answer leaves nothing to vote on, so every one of the k traces is sampled."""
    stream = await client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Describe the sea in one long sentence."}],
        max_tokens=24,
        temperature=1.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={
            "X-TTC-Strategy": "deepconf",
            "X-TTC-K": "10",
            "X-TTC-Warmup": "4",
            "X-TTC-Wave": "3",
            "X-TTC-Window": "4",
            "X-TTC-Eta": "1",
            "X-TTC-Top-Logprobs": "5",
        },
    )
    pieces: list[str] = []
    report: dict[str, Any] = {}
    usage = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        report = (chunk.model_extra or {}).get("ttc") or report
        usage = chunk.usage or usage
    assert "".join(pieces)
    decisions, samples = report["decisions"], report["samples"]
    traces = decisions["traces"]
    warmup = [t for t in traces if t["phase"] == "warmup"]
    # llama.cpp streamed the top logprobs of every warm-up token: each has a confidence
    assert len(warmup) == 4 and all(t["confidence"] > 0 for t in warmup)
    # the 99th percentile of four: 97% of the way from the second best to the best
    low, high = sorted(t["confidence"] for t in warmup)[2:]
    assert decisions["threshold"] == pytest.approx(low + 0.97 * (high - low), abs=2e-4)
    assert samples["launched"] == decisions["launched"] == len(traces)
    killed = [t for t in traces if t["killed_at"] is not None]
    assert len(killed) == decisions["killed"] >= 1
    for trace in killed:  # at or after the first full window, below the bar, billed
        assert trace["killed_at"] >= 4 and trace["phase"] == "online"
        assert trace["confidence"] < decisions["threshold"]
        assert report["sample_tokens"][trace["trace"]] >= trace["killed_at"]
    assert samples["aborted"] == decisions["killed"] + decisions["cancelled"]
    assert usage is not None
    assert usage.completion_tokens == sum(report["sample_tokens"])
