"""SpecReason's rules, pinned with a scripted sampler: small drafts, large grades (one token) and
regenerates rejected steps; scoring; every stop condition; the prompts each call continues."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from strategies import StrategyOutcome, StrategyTask
from strategies.sampling import RoleName, SampleRequest
from strategies.spec_reason import SCORE_PREFIX, SPEC, VERIFY_QUESTION, Call, score
from tests.steps_scripted import OneShot, Reply


@dataclass
class StepSampler:
    """``small`` answers from ``drafts``; ``large`` from ``scores`` for one-token calls and
    from ``rewrites`` otherwise. Renders chats as ``[role]`` tags."""

    drafts: list[Reply]
    scores: list[Reply]
    rewrites: list[Reply] = field(default_factory=list)
    budget_tokens: int | None = None
    calls: list[tuple[str, str, dict[str, Any], str | None]] = field(default_factory=list)
    renders: list[tuple[str, int]] = field(default_factory=list)
    batches: list[OneShot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._budget = [self.budget_tokens] if self.budget_tokens is not None else None

    async def render_chat(
        self, messages: list[dict[str, Any]], role: RoleName | None = None
    ) -> str:
        self.renders.append((str(role), len(messages)))
        body = "".join(f"[{m['role']}:{role}]{m['content']}" for m in messages)
        return body + f"[gen:{role}]"

    async def start(
        self,
        request: SampleRequest,
        k: int,
        role: RoleName | None = None,
    ) -> OneShot:
        assert request.prompt is not None and k == 1
        self.calls.append((str(role), request.prompt, request.params, request.sticky_key))
        if role == "small":
            reply = self.drafts.pop(0)
        elif request.params["max_tokens"] == 1:
            reply = self.scores.pop(0)
        else:
            reply = self.rewrites.pop(0)
        batch = OneShot(reply, self._budget)
        self.batches.append(batch)
        return batch


async def run(sampler: StepSampler, **params: Any) -> tuple[StrategyOutcome, list[str]]:
    assert SPEC.run is not None
    streamed: list[str] = []

    async def on_text(text: str) -> None:
        streamed.append(text)

    task = StrategyTask(
        request=SampleRequest(messages=[{"role": "user", "content": "Q"}], params={}),
        params=SPEC.parse(params),
        sampler=sampler,  # type: ignore[arg-type]
        decided=lambda: None,
    )
    task.on_text = on_text  # type: ignore[attr-defined]
    return await SPEC.run(task), streamed


async def test_a_draft_scored_at_the_threshold_is_kept_and_below_it_is_rewritten() -> None:
    sampler = StepSampler(
        drafts=[Reply("a first step"), Reply("a wrong step"), Reply("so boxed{4}")],
        scores=[Reply("7"), Reply("6"), Reply("9")],
        rewrites=[Reply("the right step")],
    )
    outcome, streamed = await run(sampler)
    assert outcome.content == "a first step\n\nthe right step\n\nso boxed{4}"
    assert streamed == ["a first step", "\n\nthe right step", "\n\nso boxed{4}"]
    assert outcome.finish_reason == "stop" and outcome.answer == "4"
    assert outcome.report["steps"] == [
        {"by": "small", "score": 7.0, "accepted": True, "tokens": 3},
        {"by": "large", "score": 6.0, "accepted": False, "draft_tokens": 3, "tokens": 3},
        {"by": "small", "score": 9.0, "accepted": True, "tokens": 2},
    ]
    assert (outcome.report["accepted"], outcome.report["rejected"]) == (2, 1)
    assert outcome.report["stopped"] == "answer"
    roles = [(role, p["max_tokens"]) for role, _, p, _ in sampler.calls]
    assert roles == [
        ("small", 512), ("large", 1),
        ("small", 512), ("large", 1), ("large", 512),
        ("small", 512), ("large", 1),
    ]  # fmt: skip
    assert all(b.cancelled for b in sampler.batches)  # every slot is given back


async def test_prompts_continue_each_roles_rendering_and_the_verifier_asks_for_one_digit() -> None:
    sampler = StepSampler(
        drafts=[Reply("one"), Reply("two"), Reply("The answer is 3")],
        scores=[Reply("8"), Reply("1"), Reply("9")],
        rewrites=[Reply("TWO")],
    )
    await run(sampler)
    prompts = [(role, prompt) for role, prompt, _, _ in sampler.calls]
    small = "[user:small]Q[gen:small]"
    large = "[user:large]Q[gen:large]"
    verify = "[user:large]Q[assistant:large]{}[user:large]" + VERIFY_QUESTION + "[gen:large]"
    assert prompts[0] == ("small", small)
    assert prompts[1] == ("large", verify.format("one\n\n") + SCORE_PREFIX)
    assert prompts[2] == ("small", small + "one\n\n")
    assert prompts[3] == ("large", verify.format("one\n\ntwo\n\n") + SCORE_PREFIX)
    assert prompts[4] == ("large", large + "one\n\n")  # the rewrite ignores the draft
    assert prompts[5] == ("small", small + "one\n\nTWO\n\n")
    # three renders in all, whatever the number of steps
    assert sampler.renders == [("small", 1), ("large", 1), ("large", 3)]
    _, _, step, sticky = sampler.calls[0]
    assert step == {"max_tokens": 512, "temperature": 0.6, "top_p": 0.95, "stop": ["\n\n"]}
    assert sampler.calls[1][2] == {"max_tokens": 1, "temperature": 0.0, "logprobs": 10}
    assert {c[3] for c in sampler.calls} == {sticky} and sticky


def test_greedy_reads_the_sampled_digit_and_anything_else_scores_0() -> None:
    assert score(Call(" 8"), "greedy") == 8.0
    for text in ("", "x", "7.", "²"):
        assert score(Call(text), "greedy") == 0.0


def test_average_is_the_expected_digit_over_the_renormalised_top_k() -> None:
    top = {"9": math.log(0.3), " 9": math.log(0.1), "5": math.log(0.4), "the": math.log(0.2)}
    assert score(Call("5", top_logprobs=top), "average") == pytest.approx((9 * 0.4 + 5 * 0.4) / 0.8)
    assert score(Call("7", top_logprobs={"a": -0.1}), "average") == 0.0


async def test_average_scoring_can_accept_what_greedy_rejects() -> None:
    top = {"6": math.log(0.4), "9": math.log(0.35), "8": math.log(0.25)}  # greedy 6, mean 7.55

    def sampler(**extra: list[Reply]) -> StepSampler:
        return StepSampler(drafts=[Reply("boxed{1}")], scores=[Reply("6", top=top)], **extra)

    greedy, _ = await run(sampler(rewrites=[Reply("boxed{2}")]))
    average, _ = await run(sampler(), score_method="average")
    assert greedy.content == "boxed{2}" and greedy.report["steps"][0]["by"] == "large"
    assert average.content == "boxed{1}" and average.report["steps"][0]["score"] == 7.55


async def test_a_repeated_step_stops() -> None:
    sampler = StepSampler(drafts=[Reply("same"), Reply("same")], scores=[Reply("9")] * 2)
    outcome, _ = await run(sampler)
    assert outcome.content == "same\n\nsame"
    assert outcome.report["stopped"] == "repeated_step" and outcome.finish_reason == "stop"


async def test_the_model_ending_stops_and_an_empty_step_is_dropped() -> None:
    at_eos = StepSampler(drafts=[Reply("a"), Reply("done", eos=True)], scores=[Reply("9")] * 2)
    outcome, _ = await run(at_eos)
    assert outcome.content == "a\n\ndone" and outcome.report["stopped"] == "eos"
    # an engine that does not say why it stopped: an empty step is the end
    unknown = StepSampler(
        drafts=[Reply("a", eos=None), Reply("", eos=None)], scores=[Reply("9")] * 2
    )
    outcome, _ = await run(unknown)
    assert outcome.content == "a" and outcome.report["stopped"] == "eos"


async def test_max_steps_and_token_budget_stop_with_finish_length() -> None:
    steps = [Reply(f"step {i} w") for i in range(10)]
    outcome, _ = await run(StepSampler(drafts=list(steps), scores=[Reply("9")] * 10), max_steps=3)
    assert outcome.content.count("\n\n") == 2 and outcome.report["stopped"] == "max_steps"
    assert outcome.finish_reason == "length"
    outcome, _ = await run(
        StepSampler(drafts=list(steps), scores=[Reply("9")] * 10), token_budget=7
    )
    assert len(outcome.content.split("\n\n")) == 3  # 3 + 3 < 7 <= 9 kept tokens
    assert outcome.report["stopped"] == "token_budget" and outcome.report["kept_tokens"] == 9


async def test_first_steps_come_from_the_large_model_without_a_grade() -> None:
    sampler = StepSampler(
        drafts=[Reply("boxed{5}")], scores=[Reply("9")], rewrites=[Reply("base one")]
    )
    outcome, _ = await run(sampler, first_n_base=1)
    assert outcome.report["steps"][0] == {
        "by": "large",
        "score": None,
        "accepted": None,
        "tokens": 2,
    }
    assert outcome.report["accepted"] == 1 and outcome.report["rejected"] == 0


async def test_the_requests_budget_ends_with_the_steps_so_far_marked_truncated() -> None:
    sampler = StepSampler(
        drafts=[Reply("one two"), Reply("three four five")],
        scores=[Reply("9")] * 2,
        budget_tokens=4,
    )
    outcome, _ = await run(sampler)
    assert outcome.content == "one two" and outcome.truncated
    assert outcome.report["stopped"] == "budget_tokens"


@pytest.mark.parametrize(
    ("params", "param"),
    [({"threshold": 10}, "threshold"), ({"score_method": "max"}, "score_method"),
     ({"step_tokens": 513}, "step_tokens")],
)  # fmt: skip
def test_parameters_are_checked(params: dict[str, Any], param: str) -> None:
    from strategies import InvalidParameter

    with pytest.raises(InvalidParameter) as error:
        SPEC.parse(params)
    assert error.value.param == param
