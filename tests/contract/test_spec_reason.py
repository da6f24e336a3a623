"""SpecReason through the gateway: a llama.cpp ``small`` pool (two workers) and a vLLM ``large``
pool, both stand-ins. Pins the request flow (render once per role, draft on small, one-token
grade on large, rewrite on large), sticky placement, and usage summing every call."""

from __future__ import annotations

from strategies.spec_reason import SCORE_PREFIX, VERIFY_QUESTION
from tests.standin import RunningStandin, Script, serve_standin
from tests.standin.engine import render_template
from tests.standin_fixtures import chat_body, pool_for, serve_gateway

QUESTION = "What is two plus two?"


def completions(standin: RunningStandin) -> list[dict[str, object]]:
    return [r.body for r in standin.engine.requests if r.path == "/v1/completions"]


async def ask(
    small: list[str], large: str, small_engine: str = "llamacpp"
) -> tuple[dict[str, object], list[RunningStandin], RunningStandin]:
    async with (
        serve_standin(small_engine, Script.text("draft step\n\nnext")) as s1,
        serve_standin(small_engine, Script.text("draft step\n\nnext")) as s2,
        serve_standin("vllm", Script.text(large), served_model="engine-model") as big,
        serve_gateway(
            pool_for(small_engine, s1.url, s2.url, name="s", model="tiny", roles=["small"]),
            pool_for("vllm", big.url, name="l", roles=["large"]),
        ) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(QUESTION),
            headers={"X-TTC-Strategy": "spec_reason", **dict.fromkeys(small, "")},
        )
        assert await gw.in_flight() == {s1.url: 0, s2.url: 0, big.url: 0}
        counted = {  # the draft steps' verdicts as exported
            d: await gw.metric("ttc_strategy_decisions_total", strategy="spec_reason", decision=d)
            for d in ("accepted", "rejected")
        }
    body = {"status": response.status_code, "counted": counted, **response.json()}
    return body, [s1, s2], big


async def test_accepted_drafts_stay_on_one_small_worker_and_usage_sums_every_call() -> None:
    body, small, large = await ask([], "8 is my grade")
    assert body["status"] == 200, body
    choice = body["choices"][0]  # type: ignore[index]
    assert choice["message"]["content"] == "draft step\n\ndraft step"  # stops: repeated step
    report = body["ttc"]["decisions"]  # type: ignore[index]
    assert [s["by"] for s in report["steps"]] == ["small", "small"]
    assert (report["accepted"], report["rejected"], report["stopped"]) == (2, 0, "repeated_step")
    assert body["counted"] == {"accepted": 2.0, "rejected": 0.0}
    # every draft went to the same small worker (its prefix cache holds the prompt)
    drafts = [completions(s) for s in small]
    assert sorted(len(d) for d in drafts) == [0, 2]
    first, second = max(drafts, key=len)
    rendered_small = render_template([{"role": "user", "content": QUESTION}], True)
    assert first["prompt"] == rendered_small
    assert second["prompt"] == rendered_small + "draft step\n\n"
    assert first["stop"] == ["\n\n"] and first["max_tokens"] == 512
    grades = completions(large)
    assert [g["max_tokens"] for g in grades] == [1, 1]
    assert grades[0]["logprobs"] == 10 and grades[0]["temperature"] == 0.0
    verifier = render_template(
        [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "draft step\n\n"},
            {"role": "user", "content": VERIFY_QUESTION},
        ],
        True,
    )
    assert grades[0]["prompt"] == verifier + SCORE_PREFIX
    # vLLM renders through /tokenize + /detokenize, llama.cpp through /apply-template, once each
    paths = [r.path for r in large.engine.requests if r.path != "/v1/completions"]
    assert paths == ["/tokenize", "/detokenize", "/tokenize", "/detokenize"]
    assert sum(r.path == "/apply-template" for s in small for r in s.engine.requests) == 1
    # 2 drafts of 2 streamed tokens + the cut "\n\n" token llama.cpp generated but sent no
    # chunk for (its usage chunk for the choice counts it, and is what is billed) + 2
    # one-token grades
    assert [s["tokens"] for s in report["steps"]] == [2, 2]
    assert body["usage"]["completion_tokens"] == 2 * 3 + 2  # type: ignore[index]


async def test_a_low_grade_makes_the_large_model_write_the_step() -> None:
    body, _, large = await ask([], "3 so the answer is boxed{4}")
    assert body["status"] == 200, body
    assert body["choices"][0]["message"]["content"] == "3 so the answer is boxed{4}"  # type: ignore[index]
    steps = body["ttc"]["decisions"]["steps"]  # type: ignore[index]
    assert steps == [
        {"by": "large", "score": 3.0, "accepted": False, "draft_tokens": 2, "tokens": 6}
    ]
    assert body["counted"] == {"accepted": 0.0, "rejected": 1.0}
    assert [g["max_tokens"] for g in completions(large)] == [1, 512]
    rewrite = completions(large)[1]["prompt"]
    assert rewrite == render_template([{"role": "user", "content": QUESTION}], True)
    # the draft's 2 streamed tokens + its unstreamed "\n\n" (billed by llama.cpp's usage)
    assert body["usage"]["completion_tokens"] == (2 + 1) + 1 + 6  # type: ignore[index]


async def test_an_engine_that_cannot_render_is_a_clear_400() -> None:
    body, small, _ = await ask([], "9", small_engine="sglang")
    assert body["status"] == 400
    assert "cannot render chat templates" in body["error"]["message"]  # type: ignore[index]
    assert all(completions(s) == [] for s in small)
