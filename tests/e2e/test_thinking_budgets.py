"""Thinking budgets end to end: the official ``openai`` SDK, the gateway, a real engine.

No reasoning model's weights ship in a package reachable here, so by default these run on the
session's real llama.cpp worker (SmolLM2-135M) in a pool declared ``reasoning.thinking:
opened``: the gateway takes everything the model writes before ``</think>`` as thinking, which
is what a template that opens the thinking (DeepSeek-R1's) makes of a reasoning model. What is
checked is mechanics: the thinking is cut at exactly the budget, the answer is continued on the
same worker with the end-of-thinking delimiter and finds the thinking in the prefix cache, and
every token is billed (and agrees with llama.cpp's own counters).

The same tests run against any reasoning-model pool (vLLM or llama.cpp with a reasoning model,
its parser on or off) by configuration::

    TTC_TEST_REASONING_CONFIG=gateway.yaml TTC_TEST_REASONING_MODEL=<model> \\
        python3 -m pytest tests/e2e/test_thinking_budgets.py

where ``gateway.yaml`` is a gateway configuration whose pool serves ``<model>``. A reasoning
model may end its thinking before the budget: such a sample is not cut and has no
continuation, and the tests check that too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.processes import gateway_cli, llamacpp_pool

pytestmark = pytest.mark.llamacpp

EXTERNAL_CONFIG = os.environ.get("TTC_TEST_REASONING_CONFIG")
MODEL = os.environ.get("TTC_TEST_REASONING_MODEL", "smollm2") if EXTERNAL_CONFIG else "smollm2"
QUESTION: list[Any] = [{"role": "user", "content": "What is 3 + 4? Think, then answer."}]
EFFORT_LOW = 10  # the fixture's thinking.effort_budgets["low"]


@pytest.fixture(scope="module")
def reasoning_gateway(request: pytest.FixtureRequest) -> Iterator[tuple[str, str | None]]:
    """(gateway URL, its llama.cpp worker's URL, or None for an external configuration)."""
    if EXTERNAL_CONFIG:
        config = yaml.safe_load(Path(EXTERNAL_CONFIG).read_text())
        with gateway_cli(config) as (url, _):
            yield url, None
        return
    worker_url, _ = request.getfixturevalue("llamacpp")
    config = {
        "server": {"log_level": "warning", "access_log": False},
        "thinking": {"effort_budgets": {"low": EFFORT_LOW, "none": 0}},
        "pools": [llamacpp_pool(worker_url, reasoning={"thinking": "opened"})],
    }
    with gateway_cli(config) as (url, _):
        yield url, worker_url


@pytest.fixture(autouse=True)
def takes_a_budget(reasoning_gateway: tuple[str, str | None]) -> None:
    """An external pool that cannot take a budget the gateway enforces (SGLang: no template
    rendering) answers a clear 400; there is nothing more to check on it."""
    if not EXTERNAL_CONFIG:
        return
    response = httpx.post(
        reasoning_gateway[0] + "/v1/chat/completions",
        json={"model": MODEL, "messages": QUESTION, "max_tokens": 1},
        headers={"X-TTC-Thinking-Budget": "1"},
        timeout=180,
    )
    if response.status_code == 400:
        error = response.json()["error"]
        assert error["code"] == "thinking_budget_unsupported", error
        pytest.skip(f"this pool takes no gateway-enforced budget: {error['message']}")


@pytest.fixture
def sdk(reasoning_gateway: tuple[str, str | None]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=reasoning_gateway[0] + "/v1", api_key="unused", max_retries=0, timeout=180
    )


def generated(worker_url: str | None) -> float | None:
    """llama.cpp's own count of the tokens it generated (None: not our worker), once it is
    idle (a sequence an earlier test aborted may still be counting its last decode step)."""
    if worker_url is None:
        return None
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(worker_url + "/metrics", timeout=5).text
        metrics = {
            line.split(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("llamacpp:")
        }
        if metrics.get("llamacpp:requests_processing") == 0 or time.monotonic() > deadline:
            return metrics["llamacpp:tokens_predicted_total"]
        time.sleep(0.05)


def check_budget(report: dict[str, Any], usage: Any, budget: int, answer_budget: int) -> None:
    """Every sample thought at most ``budget`` tokens, exactly that many when cut; each cut
    one was continued by one call on its worker that found its prompt and most of its
    thinking cached; the usage is the sum of the calls."""
    thinking = report["thinking"]
    assert (thinking["budget"], thinking["answer_budget"]) == (budget, answer_budget)
    samples = thinking["samples"]
    placement = report["placement"]
    first_calls = [call for call in placement if "continues" not in call]
    continuations = {call["continues"]: call for call in placement if "continues" in call}
    native = thinking["enforced_by"] == "engine"  # vLLM's thinking_token_budget
    if not native:
        assert len(first_calls) == len(samples)  # one request per sample under a budget
    for index, sample in enumerate(samples):
        assert sample["thinking_tokens"] <= budget + native  # vLLM may count its end token
        if native:
            assert not continuations
            continue
        assert sample["continued"] == (index in continuations)
        if not sample["cut"]:
            assert index not in continuations or sample["thinking_tokens"] < budget
            continue
        assert sample["thinking_tokens"] == budget  # cut at exactly the budget
        origin, continuation = first_calls[index], continuations[index]
        assert continuation["worker"] == origin["worker"]
        assert continuation["completion_tokens"] <= answer_budget
        # its prompt: the first call's, the thinking, the delimiter; most of it cached
        assert continuation["prompt_tokens"] >= origin["prompt_tokens"] + budget
        assert continuation["cached_tokens"] >= origin["prompt_tokens"] + budget // 2
    assert usage.completion_tokens == sum(call["completion_tokens"] for call in placement)
    assert usage.completion_tokens == sum(report["sample_tokens"])
    assert usage.prompt_tokens == sum(call["prompt_tokens"] for call in placement)
    cached = sum(call["cached_tokens"] or 0 for call in placement)
    assert usage.prompt_tokens_details.cached_tokens == cached
    reasoning = sum(sample["thinking_tokens"] for sample in samples)
    assert usage.completion_tokens_details.reasoning_tokens == reasoning


async def test_a_thinking_budget_on_majority_vote(
    sdk: openai.AsyncOpenAI, reasoning_gateway: tuple[str, str | None]
) -> None:
    before = generated(reasoning_gateway[1])
    raw = await sdk.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0.8,
        extra_headers={
            "X-TTC-Strategy": "majority_vote",
            "X-TTC-K": "3",
            "X-TTC-Thinking-Budget": "12",
            "X-TTC-Answer-Budget": "16",
        },
    )
    answer = raw.parse()
    report = (answer.model_extra or {})["ttc"]
    check_budget(report, answer.usage, 12, 16)
    winner = report["winner"]["sample"]
    message = answer.choices[0].message
    # the winner's thinking and answer, apart
    assert (message.model_extra or {}).get("reasoning_content")
    assert report["thinking"]["samples"][winner]["thinking_tokens"] > 0
    assert "</think>" not in (message.content or "")[:1]
    after = generated(reasoning_gateway[1])
    if before is not None and after is not None:
        # every generated token billed; llama.cpp also counts the few an aborted sample (the
        # vote was settled) generated after its last streamed chunk
        assert answer.usage is not None
        aborted = report["samples"]["aborted"]
        assert 0 <= after - before - answer.usage.completion_tokens <= 8 * aborted


async def test_a_thinking_budget_on_single_is_one_sample_cut_and_continued(
    sdk: openai.AsyncOpenAI,
) -> None:
    raw = await sdk.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=QUESTION,
        extra_headers={"X-TTC-Thinking-Budget": "8", "X-TTC-Answer-Budget": "8"},
    )
    answer = raw.parse()
    report = (answer.model_extra or {})["ttc"]
    assert report["strategy"] == raw.headers["x-ttc-strategy"] == "single"
    check_budget(report, answer.usage, 8, 8)
    message = answer.choices[0].message
    samples = report["thinking"]["samples"]
    if samples[0]["cut"]:  # the answer is the continuation's, the thinking the first call's
        assert (message.model_extra or {})["reasoning_content"]
        assert answer.usage is not None
        assert answer.usage.completion_tokens == 8 + report["placement"][1]["completion_tokens"]


async def test_the_budget_streams_thinking_before_the_answer(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={
            "X-TTC-Strategy": "majority_vote",
            "X-TTC-K": "2",
            "X-TTC-Thinking-Budget": "6",
            "X-TTC-Answer-Budget": "8",
        },
    )
    kinds: list[str] = []
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            if extra.get("reasoning_content"):
                kinds.append("thinking")
            if choice.delta.content:
                kinds.append("answer")
    assert kinds and kinds == sorted(kinds, key=lambda kind: kind == "answer")
    assert usage is not None and usage.completion_tokens_details is not None
    assert (usage.completion_tokens_details.reasoning_tokens or 0) <= 2 * 6


@pytest.mark.skipif(bool(EXTERNAL_CONFIG), reason="needs the fixture's effort_budgets")
async def test_reasoning_effort_maps_to_the_configured_budget(sdk: openai.AsyncOpenAI) -> None:
    answer = await sdk.chat.completions.create(
        model=MODEL, messages=QUESTION, reasoning_effort="low", max_tokens=64
    )
    report = (answer.model_extra or {})["ttc"]
    # answer budget: the default (2048), bounded by what max_tokens leaves after the thinking
    check_budget(report, answer.usage, EFFORT_LOW, 2048)
    assert answer.usage is not None and answer.usage.completion_tokens <= 64
    # "none" is no thinking: one call straight to the answer, after an empty, closed thinking
    none = await sdk.chat.completions.create(
        model=MODEL, messages=QUESTION, reasoning_effort="none", max_tokens=8
    )
    report = (none.model_extra or {})["ttc"]
    assert report["thinking"]["samples"] == [
        {"thinking_tokens": 0, "cut": True, "continued": False}
    ]
    assert len(report["placement"]) == 1
    assert "reasoning_content" not in (none.choices[0].message.model_extra or {})
    assert none.usage is not None and none.usage.completion_tokens <= 8


async def test_an_unknown_reasoning_effort_is_refused_naming_the_field(
    sdk: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            extra_body={"reasoning_effort": "extreme"},
        )
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == "reasoning_effort"
    assert "extreme" in error["message"]
