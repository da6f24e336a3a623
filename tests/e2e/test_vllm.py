"""The gateway in front of a real vLLM server (CPU build here, GPU unchanged).

Runs when ``TTC_TEST_VLLM_URL`` names a running vLLM OpenAI server whose served model is
``TTC_TEST_VLLM_MODEL`` (default ``smol``). ``deploy/vllm-cpu/e2e.sh`` sets one up on CPU, starts
it and runs this file.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.processes import gateway_cli, wait_http_ok

VLLM_URL = os.environ.get("TTC_TEST_VLLM_URL")
VLLM_MODEL = os.environ.get("TTC_TEST_VLLM_MODEL", "smol")

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not VLLM_URL, reason="set TTC_TEST_VLLM_URL (deploy/vllm-cpu/e2e.sh)"),
]

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me a long story about a lighthouse keeper."}
]


def vllm_pool(**overrides: Any) -> dict[str, Any]:
    """The pool of the CI's vLLM server (``deploy/vllm-cpu``), as ``model`` smol."""
    return {
        "name": "vllm",
        "engine": "vllm",
        "model": "smol",
        "upstream_model": VLLM_MODEL,
        "workers": [{"url": VLLM_URL}],
        **overrides,
    }


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    assert VLLM_URL
    wait_http_ok(VLLM_URL + "/health", timeout_s=600)  # CI starts vLLM just before the tests
    config = {
        "server": {"log_level": "info"},
        "pools": [vllm_pool()],
    }
    with gateway_cli(config) as (url, _):
        yield url


async def _running(http: httpx.AsyncClient) -> float:
    assert VLLM_URL
    text = (await http.get(VLLM_URL + "/metrics")).text
    values = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("vllm:num_requests_running")
    ]
    assert values, "vllm:num_requests_running not exported"
    return sum(values)


async def test_requests_flow_through_the_gateway(gateway: str) -> None:
    client = openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)
    completion = await client.chat.completions.create(
        model="smol", messages=MESSAGES, max_tokens=16, n=2, temperature=1.0
    )
    assert completion.model == "smol"
    assert len(completion.choices) == 2
    assert all(c.message.content for c in completion.choices)
    assert completion.usage is not None and completion.usage.completion_tokens > 0

    stream = await client.chat.completions.create(
        model="smol",
        messages=MESSAGES,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert pieces and usage is not None and usage.completion_tokens == 8


async def test_client_disconnect_mid_stream_stops_vllm_within_two_seconds(gateway: str) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        assert await _running(http) == 0
        async with http.stream(
            "POST",
            gateway + "/v1/chat/completions",
            json={
                "model": "smol",
                "messages": MESSAGES,
                "max_tokens": 1500,
                "n": 4,
                "temperature": 1.0,
                "ignore_eos": True,
                "stream": True,
            },
        ) as response:
            assert response.status_code == 200
            chunks = 0
            async for line in response.aiter_lines():
                chunks += line.startswith("data:")
                if chunks >= 20:
                    break
            assert await _running(http) >= 1
        closed = time.monotonic()
        while (running := await _running(http)) > 0:
            assert time.monotonic() - closed < 2.0, f"{running} requests still running after 2 s"
            await asyncio.sleep(0.05)
        print(
            f"vllm:num_requests_running back to 0 {time.monotonic() - closed:.2f}s after "
            "the client disconnected"
        )


async def _counter(http: httpx.AsyncClient, name: str) -> float:
    assert VLLM_URL
    text = (await http.get(VLLM_URL + "/metrics")).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


@pytest.mark.parametrize(
    ("strategy", "extra"), [("first_finish", {}), ("short_m_at_k", {"X-TTC-M": "2"})]
)
async def test_early_stop_leaves_nothing_running_within_a_second_of_the_decision(
    gateway: str, strategy: str, extra: dict[str, str]
) -> None:
    """...and the engine generated no more than the gateway counted: the tokens vLLM made after
    the decision (its own ``vllm:generation_tokens_total``) are the ones ``wasted_tokens``
    reports, plus at most a few decode steps the gateway never received."""
    async with httpx.AsyncClient(timeout=300) as http:
        generated_before = await _counter(http, "vllm:generation_tokens_total")
        response = await http.post(
            gateway + "/v1/chat/completions",
            headers={"X-TTC-Strategy": strategy, "X-TTC-K": "8", **extra},
            json={
                "model": "smol",
                "messages": [{"role": "user", "content": "What is 2 + 2? Reply: The answer is N."}],
                "max_tokens": 400,
                "temperature": 1.0,
            },
        )
        answered = time.monotonic()
        assert response.status_code == 200, response.text
        report = response.json()["ttc"]
        while (running := await _running(http)) > 0:
            assert time.monotonic() - answered < 1.0, f"{running} still running 1 s after"
            await asyncio.sleep(0.05)
        stopped = time.monotonic() - answered
        engine = await _counter(http, "vllm:generation_tokens_total") - generated_before
    counted = response.json()["usage"]["completion_tokens"]
    wasted = report["wasted_tokens"]
    unseen = engine - counted  # generated upstream after the gateway's last read
    print(
        f"{strategy}: decision after {report['time_to_decision_ms']} ms, {report['samples']}, "
        f"vllm:num_requests_running 0 {stopped:.2f}s after the answer; engine generated "
        f"{engine:.0f} tokens, the gateway counted {counted} ({wasted} after the decision), "
        f"{unseen:.0f} never reached it; engine-side waste "
        f"{(wasted + unseen) / engine:.1%} of the engine's tokens"
    )
    assert counted <= engine  # the gateway bills no token the engine did not make
    # at most two decode steps of the 7 losers were in flight when their stream was closed
    assert unseen <= 2 * 7, (engine, counted)


async def test_k8_samples_share_the_prompt_prefix_cache(gateway: str) -> None:
    facts = " ".join(f"Fact {i}: depot {i} holds {i * 7} crates." for i in range(60))
    prompt = f"{facts}\nHow many crates does depot 3 hold? The answer is N."
    async with httpx.AsyncClient(timeout=300) as http:
        queries = await _counter(http, "vllm:prefix_cache_queries_total")
        hits = await _counter(http, "vllm:prefix_cache_hits_total")
        response = await http.post(
            gateway + "/v1/chat/completions",
            headers={"X-TTC-Strategy": "majority_vote", "X-TTC-K": "8"},
            json={
                "model": "smol",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 8,
                "temperature": 1.0,
            },
        )
        assert response.status_code == 200, response.text
        prompt_tokens = response.json()["usage"]["prompt_tokens"]
        new_queries = await _counter(http, "vllm:prefix_cache_queries_total") - queries
        new_hits = await _counter(http, "vllm:prefix_cache_hits_total") - hits
    assert prompt_tokens > 256  # spans several KV blocks
    # one n=8 request: 7 of the 8 samples reuse the first sample's prompt blocks
    assert new_hits >= 6 * (prompt_tokens - 128), (new_hits, new_queries, prompt_tokens)
    print(
        f"k=8 prompt of {prompt_tokens} tokens: prefix cache {new_hits:.0f} hits / "
        f"{new_queries:.0f} queries"
    )


@pytest.fixture(scope="module")
def opened_gateway() -> Iterator[str]:
    """The vLLM pool declared ``reasoning.thinking: opened``: SmolLM2 writes no ``</think>``,
    so everything it writes counts as thinking, and a thinking budget cuts it (mechanics)."""
    assert VLLM_URL
    wait_http_ok(VLLM_URL + "/health", timeout_s=600)
    config = {
        "server": {"log_level": "warning", "access_log": False},
        "pools": [vllm_pool(reasoning={"thinking": "opened"})],
    }
    with gateway_cli(config) as (url, _):
        yield url


async def test_a_thinking_budget_is_cut_and_continued_in_vllms_prefix_cache(
    opened_gateway: str,
) -> None:
    facts = " ".join(f"Fact {i}: depot {i} holds {i * 7} crates." for i in range(30))
    prompt = f"{facts}\nTell me a long story about the keeper of depot 3."
    async with httpx.AsyncClient(timeout=300) as http:
        before = {
            name: await _counter(http, name)
            for name in ("vllm:prefix_cache_hits_total", "vllm:generation_tokens_total")
        }
        response = await http.post(
            opened_gateway + "/v1/chat/completions",
            headers={
                "X-TTC-Strategy": "majority_vote",
                "X-TTC-K": "2",
                "X-TTC-Thinking-Budget": "32",
                "X-TTC-Answer-Budget": "8",
            },
            json={
                "model": "smol",
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 1.0,
            },
        )
        assert response.status_code == 200, response.text
        # vLLM publishes its counters a moment after a request ends
        for _ in range(100):
            if not await _running(http):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        after = {name: await _counter(http, name) for name in before}
    body = response.json()
    report, usage = body["ttc"], body["usage"]
    samples = report["thinking"]["samples"]
    placement = report["placement"]
    firsts = [call for call in placement if "continues" not in call]
    continuations = {call["continues"]: call for call in placement if "continues" in call}
    assert [call["samples"] for call in firsts] == [1, 1]
    # every sample is continued: cut at the budget, or (rare on a long story) ended by the
    # model before it while still thinking (SmolLM2 never writes </think>), so it has an answer
    cut = [i for i, sample in enumerate(samples) if sample["cut"]]
    assert sorted(continuations) == [0, 1] and cut
    assert all(sample["continued"] for sample in samples)
    for i, sample in enumerate(samples):
        assert sample["thinking_tokens"] == 32 if i in cut else sample["thinking_tokens"] < 32
    for sample, call in continuations.items():
        # the rendered chat (vLLM /tokenize + /detokenize), the thinking, the delimiter
        thought = samples[sample]["thinking_tokens"]
        assert call["prompt_tokens"] >= firsts[sample]["prompt_tokens"] + thought
        assert 1 <= call["completion_tokens"] <= 8
    assert body["choices"][0]["message"]["reasoning_content"]
    assert usage["completion_tokens"] == sum(call["completion_tokens"] for call in placement)
    assert usage["completion_tokens"] == sum(report["sample_tokens"])
    thinking = sum(sample["thinking_tokens"] for sample in samples)
    assert usage["completion_tokens_details"] == {"reasoning_tokens": thinking}
    # every generated token billed, as vLLM counted them
    generated = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    assert generated == usage["completion_tokens"]
    # the second first call reuses the first's prompt blocks, and each continuation its
    # sample's prompt and thinking (vLLM caches whole 16-token blocks)
    hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    prompt_tokens = firsts[0]["prompt_tokens"]
    assert hits >= (prompt_tokens - 16) + len(cut) * (prompt_tokens + 32 - 16), (hits, placement)
    print(f"thinking budget on vLLM: {hits:.0f} prefix-cache hits, placement {placement}")
