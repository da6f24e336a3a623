"""``best_of_n`` (judge pool) and ``cascade`` (small and large pools) through the gateway, each
role served by its own scripted stand-in: which pool gets which request, what is billed, and
that the OpenAI SDK reads the answer."""

from __future__ import annotations

import openai
import pytest

from tests.standin import Script, serve_standin
from tests.standin.script import SampleScript
from tests.standin_fixtures import PUBLIC_MODEL, chat_body, pool_for, serve_gateway

AGREE = Script.text("the answer is 4", "the answer is 4", "the answer is 4")
DISAGREE = Script.text("the answer is 4", "the answer is 5", "the answer is 4")
LARGE_ANSWER = "the large model says 7"  # 5 tokens


@pytest.mark.parametrize(("small_script", "escalated"), [(AGREE, False), (DISAGREE, True)])
async def test_cascade_calls_the_large_pool_only_when_the_small_samples_disagree(
    small_script: Script, escalated: bool
) -> None:
    async with (
        serve_standin("vllm", small_script) as small,
        serve_standin("vllm", Script.text(LARGE_ANSWER)) as large,
        serve_gateway(
            pool_for("vllm", small.url, name="small", roles=["small"]),
            pool_for("vllm", large.url, name="large", model="large-model", roles=["large"]),
        ) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-TTC-Strategy": "cascade"}
        )
        decisions = {
            d: await gw.metric("ttc_strategy_decisions_total", strategy="cascade", decision=d)
            for d in ("accepted", "escalated")
        }
    assert response.status_code == 200, response.text
    body = response.json()
    report = body["ttc"]
    assert [r.body["n"] for r in small.engine.requests] == [3]  # k=3 in one request
    assert report["decisions"]["escalated"] is escalated
    # the strategy's own count of its decision, exported as it reported it
    assert decisions == {"accepted": float(not escalated), "escalated": float(escalated)}
    small_tokens = 12  # three samples of 4 tokens
    if escalated:
        assert [r.body["n"] for r in large.engine.requests] == [1]  # escalate_to=single
        assert body["choices"][0]["message"]["content"] == LARGE_ANSWER
        assert report["decisions"]["small"]["votes"] == {"4": 2, "5": 1}
        assert report["decisions"]["large"]["strategy"] == "single"
        assert body["usage"]["completion_tokens"] == small_tokens + 5
    else:
        assert large.engine.requests == []
        assert body["choices"][0]["message"]["content"] == "the answer is 4"
        assert body["usage"]["completion_tokens"] == small_tokens
    assert body["usage"]["completion_tokens"] == sum(report["sample_tokens"])


async def test_cascade_escalates_to_majority_vote_on_the_large_pool_and_the_sdk_reads_it() -> None:
    async with (
        serve_standin("vllm", DISAGREE) as small,
        serve_standin("vllm", Script.text("so 7", "so 8", "so 7 again", "so 7")) as large,
        serve_gateway(
            pool_for("vllm", small.url, name="small", roles=["small"]),
            pool_for("vllm", large.url, name="large", model="large-model", roles=["large"]),
        ) as gw,
    ):
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        answer = await client.chat.completions.create(
            model=PUBLIC_MODEL,
            messages=chat_body()["messages"],
            extra_headers={
                "X-TTC-Strategy": "cascade",
                "X-TTC-Escalate-To": "majority_vote",
                "X-TTC-Large-K": "4",
            },
        )
    assert [r.body["n"] for r in large.engine.requests] == [4]
    assert answer.choices[0].message.content == "so 7"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 12 + (2 + 2 + 3 + 2)
    assert answer.model_extra is not None
    report = answer.model_extra["ttc"]
    assert report["votes"] == {"7": 3, "8": 1}  # the large vote decided
    assert report["decisions"]["large"]["parameters"] == {"k": 4}
    assert report["samples"]["launched"] == 3 + 4


@pytest.mark.parametrize(("logprob", "escalated"), [(-0.2, False), (-2.0, True)])
async def test_cascade_confidence_rule_asks_the_small_pool_for_logprobs(
    logprob: float, escalated: bool
) -> None:
    confident = Script(samples=[SampleScript("the answer is 4", logprobs=[logprob])])
    async with (
        serve_standin("vllm", confident) as small,
        serve_standin("vllm", Script.text(LARGE_ANSWER)) as large,
        serve_gateway(
            pool_for("vllm", small.url, name="small", roles=["small"]),
            pool_for("vllm", large.url, name="large", model="large-model", roles=["large"]),
        ) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(ttc={"strategy": "cascade", "rule": "confidence", "k": 1}),
        )
    assert response.status_code == 200, response.text
    decisions = response.json()["ttc"]["decisions"]
    assert small.engine.requests[0].body["logprobs"] is True
    assert decisions["confidence"] == pytest.approx(logprob)
    assert decisions["escalated"] is escalated
    assert len(large.engine.requests) == (1 if escalated else 0)
    assert "logprobs" not in (large.engine.requests[0].body if escalated else {})


async def test_best_of_n_asks_the_judge_pool_once_per_candidate_and_bills_it() -> None:
    candidates = Script(
        samples=[
            SampleScript("slow answer is 1", token_delay_s=0.02),
            SampleScript("fast answer is 2", token_delay_s=0.005),
            SampleScript("middle answer is 3", token_delay_s=0.01),
        ]
    )
    judge_script = Script(samples=[SampleScript(["7", " because"], logprobs=[-0.3])])
    async with (
        serve_standin("vllm", candidates) as sampler,
        serve_standin("vllm", judge_script) as judge,
        serve_gateway(
            pool_for("vllm", sampler.url, name="main", roles=["small"]),
            pool_for("vllm", judge.url, name="judge", model="judge-model", roles=["judge"]),
        ) as gw,
    ):
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        answer = await client.chat.completions.create(
            model=PUBLIC_MODEL,
            messages=chat_body()["messages"],
            extra_headers={"X-TTC-Strategy": "best_of_n", "X-TTC-K": "3"},
        )
    assert [r.body["n"] for r in sampler.engine.requests] == [3]
    judged = [r.body for r in judge.engine.requests]
    assert len(judged) == 3
    for body in judged:
        assert (body["temperature"], body["max_tokens"], body["n"]) == (0, 1, 1)
        assert (body["logprobs"], body["top_logprobs"]) == (True, 10)
    prompts = " ".join(body["messages"][0]["content"] for body in judged)
    for text in ("slow answer is 1", "fast answer is 2", "middle answer is 3"):
        assert text in prompts
    # every candidate scores 7 (the only digit in the judge's top-10): the first to finish wins
    assert answer.choices[0].message.content == "fast answer is 2"
    assert answer.model_extra is not None
    report = answer.model_extra["ttc"]
    assert [s["score"] for s in report["decisions"]["scores"]] == [7.0, 7.0, 7.0]
    assert answer.usage is not None
    assert answer.usage.completion_tokens == (4 + 4 + 4) + 3  # candidates + one judge token each
