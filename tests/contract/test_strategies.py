"""Strategies through the gateway against a scripted engine stand-in: fan-out shape, early
abort upstream, usage of every sample, the ``ttc`` report, streaming, budgets."""

from __future__ import annotations

import time

import openai
import pytest

from tests.standin import Script, serve_standin
from tests.standin.script import SampleScript
from tests.standin_fixtures import PUBLIC_MODEL, chat_body, pool_for, serve_gateway, sse_events

FAST_THEN_SLOW = Script(
    samples=[
        SampleScript("the answer is 4", token_delay_s=0.01),
        SampleScript("well the answer is 4 too", token_delay_s=0.01),
        SampleScript(" ".join(["slow"] * 200) + " 5", token_delay_s=0.02),
    ]
)


@pytest.mark.parametrize("engine", ["vllm", "llamacpp"])
async def test_early_stop_aborts_the_losers_and_bills_every_sample(engine: str) -> None:
    async with (
        serve_standin(engine, FAST_THEN_SLOW) as standin,
        serve_gateway(pool_for(engine, standin.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={"X-TTC-Strategy": "short_m_at_k", "X-TTC-K": "3", "X-TTC-M": "2"},
        )
        assert response.status_code == 200, response.text
        # one upstream request with n=k: the engine prefills the prompt once
        assert [r.body["n"] for r in standin.engine.requests] == [3]
        await standin.engine.wait_until(lambda e: e.running == 0 and e.aborted == 1, 1.0)
        assert await gw.in_flight() == {standin.url: 0}
    body = response.json()
    report = body["ttc"]
    assert body["choices"][0]["message"]["content"] == "the answer is 4"
    assert report["winner"] == {"sample": 0, "answer": "4"}
    assert report["samples"] == {"launched": 3, "finished": 2, "aborted": 1, "failed": 0}
    tokens = report["sample_tokens"]
    assert tokens[:2] == [4, 6] and 0 < tokens[2] < 201  # the loser was cut early
    assert body["usage"]["completion_tokens"] == sum(tokens)  # aborted tokens are billed
    assert response.headers["x-ttc-samples-aborted"] == "1"
    assert int(response.headers["x-ttc-wasted-tokens"]) <= 2


async def test_the_openai_sdk_parses_a_strategy_answer_streamed_and_not() -> None:
    async with (
        serve_standin("vllm", FAST_THEN_SLOW) as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        headers = {"X-TTC-Strategy": "first_finish", "X-TTC-K": "3"}
        answer = await client.chat.completions.create(
            model=PUBLIC_MODEL, messages=chat_body()["messages"], extra_headers=headers
        )
        stream = await client.chat.completions.create(
            model=PUBLIC_MODEL,
            messages=chat_body()["messages"],
            extra_headers=headers,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
    assert answer.choices[0].message.content == "the answer is 4"
    assert (
        answer.model_extra is not None and answer.model_extra["ttc"]["strategy"] == "first_finish"
    )
    assert "".join(pieces) == "the answer is 4"
    assert usage is not None and usage.completion_tokens >= 4


async def test_stream_sends_heartbeats_while_deciding() -> None:
    slow = Script.text("a b c d e f g h i j k l m n o p q r s t u v w x y z 1", token_delay_s=0.06)
    async with (
        serve_standin("vllm", slow) as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(stream=True),
            headers={"X-TTC-Strategy": "majority_vote", "X-TTC-K": "2"},
        )
    assert response.text.startswith(": deciding")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["ttc"]["votes"] == {"1": 2}


async def test_deadline_returns_the_best_so_far_marked_truncated() -> None:
    script = Script(
        samples=[
            SampleScript("quick answer 3", token_delay_s=0.01),
            SampleScript(" ".join(["slow"] * 500), token_delay_s=0.02),
        ]
    )
    async with (
        serve_standin("vllm", script) as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        started = time.monotonic()
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={"X-TTC-Strategy": "majority_vote", "X-TTC-K": "2", "X-TTC-Deadline-Ms": "400"},
        )
        elapsed = time.monotonic() - started
        await standin.engine.wait_until(lambda e: e.running == 0, 1.0)
    assert response.status_code == 200
    assert 0.4 <= elapsed < 1.5
    assert response.headers["x-ttc-truncated"] == "true"
    assert response.json()["ttc"]["winner"]["answer"] == "3"


async def test_token_budget_stops_all_samples() -> None:
    script = Script.text(" ".join(["w"] * 300), token_delay_s=0.005)
    async with (
        serve_standin("vllm", script) as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={
                "X-TTC-Strategy": "majority_vote",
                "X-TTC-K": "4",
                "X-TTC-Max-Tokens-Total": "40",
            },
        )
        await standin.engine.wait_until(lambda e: e.running == 0 and e.aborted == 1, 1.0)
    body = response.json()
    assert body["ttc"]["truncated"] is True
    assert 40 <= body["usage"]["completion_tokens"] <= 48  # stopped within one chunk round


@pytest.mark.parametrize(
    ("headers", "param"),
    [
        ({"X-TTC-K": "0"}, "X-TTC-K"),
        ({"X-TTC-K": "2", "X-TTC-M": "3"}, "X-TTC-M"),
        ({"X-TTC-Threshold": "7"}, "X-TTC-Threshold"),
    ],
)
async def test_bad_strategy_parameters_are_400(headers: dict[str, str], param: str) -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={"X-TTC-Strategy": "short_m_at_k", **headers},
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert standin.engine.requests == []


async def test_strategies_need_n_1_and_chat() -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        with_n = await gw.client.post(
            "/v1/chat/completions", json=chat_body(n=2), headers={"X-TTC-Strategy": "majority_vote"}
        )
        text = await gw.client.post(
            "/v1/completions",
            json={"model": PUBLIC_MODEL, "prompt": "hi"},
            headers={"X-TTC-Strategy": "majority_vote"},
        )
    assert with_n.status_code == 400 and with_n.json()["error"]["param"] == "n"
    assert text.status_code == 400 and text.json()["error"]["param"] == "X-TTC-Strategy"


@pytest.mark.parametrize(
    ("equivalence", "votes"),
    [
        ("exact", {"x+1": 1, "1+x": 1, "\\frac{1}{2}": 1, "0.5": 1}),
        ("numeric", {"x+1": 1, "1+x": 1, "\\frac{1}{2}": 2}),
        ("symbolic", {"x+1": 2, "\\frac{1}{2}": 2}),  # the real math-verify, in a worker
    ],
)
async def test_answers_equivalence_decides_which_answers_vote_together(
    equivalence: str, votes: dict[str, int]
) -> None:
    script = Script(
        samples=[
            SampleScript(f"so the answer is \\boxed{{{answer}}}", token_delay_s=0.01 * (i + 1))
            for i, answer in enumerate(["x+1", "\\frac{1}{2}", "1+x", "0.5"])
        ]
    )
    async with (
        serve_standin("vllm", script) as standin,
        serve_gateway(pool_for("vllm", standin.url), answers={"equivalence": equivalence}) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={"X-TTC-Strategy": "majority_vote", "X-TTC-K": "4"},
        )
    assert response.status_code == 200, response.text
    assert response.json()["ttc"]["votes"] == votes
