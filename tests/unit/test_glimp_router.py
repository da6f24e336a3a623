"""GlimpRouter's rules on a scripted sampler: the small model's one-token glimpse, its entropy
against the threshold, who writes each step, the prompts, every stop, the answer after the
thinking, and the budgets."""

from __future__ import annotations

import math
from typing import Any

import pytest

from strategies import InvalidParameter
from strategies.glimp_router import SPEC
from strategies.sampling import ThinkingBudget
from strategies.steps import entropy
from tests.steps_scripted import Reply, SequenceSampler, run_steps

SURE = {"a": 0.0}  # one alternative: H = 0, the small model writes
UNSURE = {t: math.log(1 / 3) for t in "abc"}  # H = log 3 = 1.0986 >= 1.0: the large model
GLIMPSE = {"max_tokens": 1, "temperature": 0.0, "logprobs": 20}
STEP = {"max_tokens": 512, "temperature": 0.6, "top_p": 0.95, "stop": ["\n\n"]}
SMALL = "[user:small]Q[gen:small]<think>\n"
LARGE = "[user:large]Q[gen:large]<think>\n"


def glimpse(top: dict[str, float]) -> tuple[str, Reply]:
    return ("small", Reply("x", finish="length", top=top, count=1))


async def test_each_step_is_written_by_who_the_glimpse_entropy_picks_then_large_answers() -> None:
    sampler = SequenceSampler(
        [
            glimpse(SURE), ("small", Reply("Add three and four.")),
            glimpse(UNSURE), ("large", Reply("That is seven.")),
            glimpse(SURE), ("small", Reply("Done.\n</think>")),
            ("large", Reply("The answer is \\boxed{7}.", eos=True)),
        ]
    )  # fmt: skip
    ran = await run_steps(SPEC, sampler)
    outcome = ran.outcome
    assert outcome.reasoning == "Add three and four.\n\nThat is seven.\n\nDone."
    assert ran.reasoning == ["Add three and four.", "\n\nThat is seven.", "\n\nDone."]
    assert outcome.content == "The answer is \\boxed{7}." and ran.text == [outcome.content]
    assert outcome.answer == "7" and outcome.finish_reason == "stop" and not outcome.truncated
    assert [(s["by"], s["entropy"], s["tokens"]) for s in ran.report["steps"]] == [
        ("small", 0.0, 4),
        ("large", round(math.log(3), 4), 3),
        ("small", 0.0, 2),
    ]
    assert ran.report["stopped"] == "end_of_thinking" and ran.report["kept_tokens"] == 9
    assert ran.report["answer_tokens"] == 4
    assert outcome.decisions == {"small": 2, "large": 1}
    prompts = [(s.role, s.prompt) for s in sampler.sent]
    assert prompts == [
        ("small", SMALL),
        ("small", SMALL),  # the glimpse and the step continue the same text
        ("small", SMALL + "Add three and four.\n\n"),
        ("large", LARGE + "Add three and four.\n\n"),
        ("small", SMALL + "Add three and four.\n\nThat is seven.\n\n"),
        ("small", SMALL + "Add three and four.\n\nThat is seven.\n\n"),
        ("large", LARGE + "Add three and four.\n\nThat is seven.\n\nDone.\n</think>\n\n"),
    ]
    assert [s.params for s in sampler.sent] == [GLIMPSE, STEP] * 3 + [
        {"max_tokens": 2048, "temperature": 0.6, "top_p": 0.95}
    ]
    assert {s.sticky_key for s in sampler.sent} == {"glimp_router"}
    assert sampler.renders == [("small", 1), ("large", 1)]  # once per role


@pytest.mark.parametrize(
    ("shift", "writer"), [(1e-9, "small"), (0.0, "large"), (-1e-9, "large")]
)  # threshold just above H, at H, just below H
async def test_a_step_goes_to_the_large_model_iff_the_entropy_reaches_the_threshold(
    shift: float, writer: str
) -> None:
    top = {"7": math.log(0.6), "8": math.log(0.3), " 7": math.log(0.1)}
    h = entropy(top)
    assert h is not None
    sampler = SequenceSampler(
        [glimpse(top), (writer, Reply("boxed{7}", eos=True)), ("large", Reply("7"))]
    )
    ran = await run_steps(SPEC, sampler, threshold=h + shift)
    assert ran.report["steps"][0]["by"] == writer
    assert ran.outcome.decisions == {
        "small": int(writer == "small"),
        "large": int(writer == "large"),
    }


async def test_the_default_threshold_is_one_nat() -> None:
    halves = {"a": math.log(0.5), "b": math.log(0.5)}  # H = log 2 = 0.693
    sampler = SequenceSampler(
        [glimpse(halves), ("small", Reply("a")), glimpse(UNSURE), ("large", Reply("b", eos=True)),
         ("large", Reply("ok"))]
    )  # fmt: skip
    ran = await run_steps(SPEC, sampler)
    assert [s["entropy"] for s in ran.report["steps"]] == [0.6931, 1.0986]
    assert ran.report["stopped"] == "eos"


async def test_a_glimpse_without_logprobs_goes_to_the_large_model() -> None:
    sampler = SequenceSampler(
        [("small", Reply("x", count=1)), ("large", Reply("", eos=True, count=0)),
         ("large", Reply("7"))]
    )  # fmt: skip
    ran = await run_steps(SPEC, sampler)
    assert ran.report["steps"] == [
        {"by": "large", "entropy": None, "glimpse_tokens": 1, "tokens": 0, "text": ""}
    ]
    assert ran.outcome.reasoning == "" and ran.reasoning == []
    assert sampler.sent[-1].prompt == LARGE + "\n</think>\n\n"  # nothing was thought


async def test_a_template_that_opens_the_thinking_gets_no_second_opener() -> None:
    sampler = SequenceSampler(
        [glimpse(SURE), ("small", Reply("a", eos=True)), ("large", Reply("7"))],
        opener="<think>\n",
    )
    await run_steps(SPEC, sampler)
    assert sampler.sent[0].prompt == "[user:small]Q[gen:small]<think>\n"
    assert sampler.sent[-1].prompt == "[user:large]Q[gen:large]<think>\na\n</think>\n\n"


async def test_a_repeated_step_stops_and_max_steps_stops() -> None:
    sampler = SequenceSampler(
        [glimpse(SURE), ("small", Reply("same")), glimpse(SURE), ("small", Reply("same")),
         ("large", Reply("7"))]
    )  # fmt: skip
    ran = await run_steps(SPEC, sampler)
    assert ran.report["stopped"] == "repeated_step" and ran.outcome.reasoning == "same\n\nsame"
    script = [glimpse(SURE), ("small", Reply("one")), glimpse(SURE), ("small", Reply("two"))]
    ran = await run_steps(SPEC, SequenceSampler([*script, ("large", Reply("7"))]), max_steps=2)
    assert ran.report["stopped"] == "max_steps" and ran.outcome.reasoning == "one\n\ntwo"
    assert ran.outcome.finish_reason == "stop"  # the answer finished; the thinking was cut


async def test_the_token_budget_counts_kept_steps_and_cuts_the_last_one() -> None:
    sampler = SequenceSampler(
        [glimpse(SURE), ("small", Reply("a b c")), glimpse(UNSURE),
         ("large", Reply("d e", finish="length")), ("large", Reply("7"))]
    )  # fmt: skip
    ran = await run_steps(SPEC, sampler, token_budget=5)
    assert [s.params["max_tokens"] for s in sampler.sent] == [1, 5, 1, 2, 2048]
    assert ran.report["stopped"] == "token_budget" and ran.report["kept_tokens"] == 5


async def test_a_thinking_budget_caps_the_token_budget_and_the_answer() -> None:
    sampler = SequenceSampler(
        [glimpse(SURE), ("small", Reply("a b c")), glimpse(SURE), ("small", Reply("d")),
         ("large", Reply("7"))]
    )  # fmt: skip
    ran = await run_steps(SPEC, sampler, thinking=ThinkingBudget(4, 100), token_budget=50)
    assert [s.params["max_tokens"] for s in sampler.sent] == [1, 4, 1, 1, 100]
    assert ran.report["stopped"] == "token_budget" and ran.outcome.reasoning == "a b c\n\nd"
    # no thinking at all: the large model answers at once
    sampler = SequenceSampler([("large", Reply("7"))])
    ran = await run_steps(SPEC, sampler, thinking=ThinkingBudget(0, 8))
    assert sampler.sent[0].prompt == LARGE + "\n</think>\n\n"
    assert sampler.sent[0].params["max_tokens"] == 8 and ran.report["stopped"] == "token_budget"


async def test_the_requests_sampling_and_max_tokens_apply_to_steps_and_answer() -> None:
    sampler = SequenceSampler(
        [glimpse(SURE), ("small", Reply("a", eos=True)), ("large", Reply("7"))]
    )
    body = {"temperature": 0.2, "top_p": 0.5, "max_tokens": 64}
    await run_steps(SPEC, sampler, body=body)
    assert sampler.sent[1].params == {
        "max_tokens": 64, "temperature": 0.2, "top_p": 0.5, "stop": ["\n\n"]
    }  # fmt: skip
    assert sampler.sent[2].params == {"max_tokens": 64, "temperature": 0.2, "top_p": 0.5}


async def test_the_requests_budget_ends_with_the_kept_thinking_and_no_answer() -> None:
    sampler = SequenceSampler(
        [glimpse(SURE), ("small", Reply("one two")), glimpse(SURE), ("small", Reply("3 4 5"))],
        budget_tokens=5,
    )
    ran = await run_steps(SPEC, sampler)
    assert ran.outcome.reasoning == "one two" and ran.outcome.content == ""
    assert ran.outcome.truncated and ran.outcome.finish_reason == "length"
    assert ran.report["stopped"] == "budget_tokens"


def test_entropy_is_in_nats_over_the_renormalised_alternatives() -> None:
    assert entropy({f"t{i}": -3.0 for i in range(20)}) == pytest.approx(math.log(20))
    assert entropy({"a": -0.01}) == 0.0
    # 0.3 and 0.1 of the mass: renormalised to 0.75 / 0.25
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert entropy({"a": math.log(0.3), "b": math.log(0.1)}) == pytest.approx(h)
    assert entropy({"a": 0.0, "b": -1000.0}) == 0.0  # an underflowing alternative adds nothing
    assert entropy({}) is None


def test_worst_case_bounds_every_call() -> None:
    bound = SPEC.bound(SPEC.parse({"max_steps": 3, "step_tokens": 10, "answer_tokens": 20,
                                   "token_budget": 30}), 100, 0)  # fmt: skip
    context = 100 + 30 + len("<think></think>") + 8
    assert bound.completion_tokens == 3 * (1 + 10) + 20
    assert bound.prompt_tokens == 7 * context


@pytest.mark.parametrize(
    ("params", "param"),
    [({"threshold": -0.1}, "threshold"), ({"step_tokens": 0}, "step_tokens"),
     ({"answer_tokens": 0}, "answer_tokens"), ({"max_steps": 0}, "max_steps")],
)  # fmt: skip
def test_parameters_are_checked(params: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParameter) as error:
        SPEC.parse(params)
    assert error.value.param == param
