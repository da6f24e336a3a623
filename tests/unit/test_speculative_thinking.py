"""Speculative Thinking's rules on a scripted sampler: the small model's paragraphs, the probes at
each paragraph break and their sentiment, which probe is kept, the large model's continuation
after a verify word, its recap after many negative paragraphs (threshold and length growing),
every stop, the answer after the thinking, and the budgets."""

from __future__ import annotations

from typing import Any

import pytest

from strategies import InvalidParameter
from strategies.sampling import ThinkingBudget
from strategies.speculative_thinking import RECAP_WORDS, SPEC, _grown, sentiment
from tests.steps_scripted import Reply, SequenceSampler, run_steps

SMALL = "[user:small]Q[gen:small]<think>\n"
LARGE = "[user:large]Q[gen:large]<think>\n"
SAMPLING = {"temperature": 0.6, "top_p": 0.95}
PARAGRAPH = {"max_tokens": 1024, **SAMPLING, "stop": ["\n\n"]}
PROBE = {"max_tokens": 20, **SAMPLING}
ANSWER = ("large", Reply("The answer is 7.", eos=True))


def para(text: str, **kw: Any) -> tuple[str, Reply]:
    """The small model's text up to a paragraph break."""
    return ("small", Reply(text, **kw))


def probe(role: str, text: str) -> tuple[str, Reply]:
    return (role, Reply(text, finish="length"))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Yes, that is the final answer.", 1),
        ("Wait, let me verify.", -1),
        ("Hmm, another way: check it.", -1),
        ("Yes, wait.", -1),  # as many negative as positive words: negative
        ("YES, I am confident. Wait.", 1),  # lower-cased; 2 positive against 1
        ("So 3 + 4 = 7.", 0),
        ("", 0),
        ("My eyes", 1),  # substrings count, as in the authors' code
    ],
)
def test_sentiment_counts_the_keywords(text: str, value: int) -> None:
    assert sentiment(text) == value


async def test_a_neutral_probe_is_discarded_and_the_small_model_goes_on() -> None:
    sampler = SequenceSampler([para("A."), probe("small", "so we add them"), para("B."), ANSWER])
    ran = await run_steps(SPEC, sampler, max_steps=2)
    assert ran.outcome.reasoning == "A.\n\nB." and ran.reasoning == ["A.", "\n\nB."]
    assert ran.outcome.content == "The answer is 7." and ran.text == ["The answer is 7."]
    assert ran.outcome.answer == "7" and ran.outcome.finish_reason == "stop"
    assert [(s.role, s.prompt) for s in sampler.sent] == [
        ("small", SMALL),
        ("small", SMALL + "A.\n\n"),  # the probe
        ("small", SMALL + "A.\n\n"),  # the probe left no trace
        ("large", LARGE + "A.\n\nB.\n</think>\n\n"),
    ]
    assert [s.params for s in sampler.sent] == [
        PARAGRAPH, PROBE, PARAGRAPH, {"max_tokens": 2048, **SAMPLING}
    ]  # fmt: skip
    assert {s.sticky_key for s in sampler.sent} == {"speculative_thinking"}
    steps = ran.report["steps"]
    assert [(s["by"], s["sentiment"], s["probe_tokens"], s["text"]) for s in steps] == [
        ("small", None, 0, "A."),
        ("small", 0, 4, "B."),
    ]
    assert ran.outcome.decisions == {"small": 2, "large": 0, "recap": 0, "verify": 0}
    assert (ran.report["stopped"], ran.report["kept_tokens"]) == ("max_steps", 2)


async def test_a_positive_or_negative_probe_makes_the_large_model_write_and_its_text_is_kept() -> (
    None
):
    sampler = SequenceSampler(
        [para("A."), probe("small", "Yes, so"), probe("large", "Wait, that is"),
         para(" wrong."), ANSWER]
    )  # fmt: skip
    ran = await run_steps(SPEC, sampler, max_steps=2)
    assert ran.outcome.reasoning == "A.\n\nWait, that is wrong."
    assert ran.reasoning == ["A.", "\n\nWait, that is", " wrong."]
    assert sampler.sent[2].prompt == LARGE + "A.\n\n" and sampler.sent[2].params == PROBE
    assert sampler.sent[3].prompt == SMALL + "A.\n\nWait, that is"  # SMALL goes on after it
    step = ran.report["steps"][1]
    assert (step["by"], step["sentiment"], step["large_sentiment"]) == ("large", 1, -1)
    assert (step["tokens"], step["probe_tokens"]) == (3 + 1, 2)  # SMALL's probe not kept
    assert ran.outcome.decisions == {"small": 1, "large": 1, "recap": 0, "verify": 0}


@pytest.mark.parametrize(
    ("small", "large", "kept"),
    [
        ("Wait so", "Yes so", "large"),  # negative, then not negative: the large model's
        ("Wait so", "Then so", "large"),
        ("Wait so", "Hold on", "small"),  # both negative: the small model's
        ("Yes so", "Wait so", "large"),  # positive, then negative: the large model's
        ("Yes so", "Yes indeed", "small"),
        ("Yes so", "Then so", "small"),
    ],
)
async def test_without_choose_large_the_large_probe_is_kept_only_when_it_disagrees(
    small: str, large: str, kept: str
) -> None:
    sampler = SequenceSampler(
        [para("A."), probe("small", small), probe("large", large), para(" end."), ANSWER]
    )
    ran = await run_steps(SPEC, sampler, max_steps=2, choose_large=False)
    text = large if kept == "large" else small
    assert ran.outcome.reasoning == f"A.\n\n{text} end."
    step = ran.report["steps"][1]
    assert (step["by"], step["sentiment"], step["large_sentiment"]) == (
        kept, sentiment(small), sentiment(large)
    )  # fmt: skip
    assert step["probe_tokens"] == 2  # the other probe


async def test_a_verify_word_in_the_kept_probe_lets_the_large_model_go_on_for_the_recap() -> None:
    sampler = SequenceSampler(
        [para("A."), probe("small", "Let me verify"), probe("large", "Let me check this"),
         ("large", Reply(" It holds.", finish="length")), para(" So 7."), ANSWER]
    )  # fmt: skip
    ran = await run_steps(SPEC, sampler, max_steps=2)
    assert sampler.sent[3].role == "large"
    assert sampler.sent[3].prompt == LARGE + "A.\n\nLet me check this"
    assert sampler.sent[3].params == {"max_tokens": 125, **SAMPLING}
    assert ran.outcome.reasoning == "A.\n\nLet me check this It holds. So 7."
    step = ran.report["steps"][1]
    assert step["verify"] is True and step["tokens"] == 4 + 2 + 2
    assert ran.outcome.decisions == {"small": 1, "large": 1, "recap": 0, "verify": 1}


async def test_after_enough_negative_paragraphs_the_large_model_recaps_and_both_limits_grow() -> (
    None
):
    negative = [probe("small", "wait"), probe("large", "hmm, wait")]
    script = [para("A."), *negative, para(" B.")]
    script += [("large", Reply(" All fine.", finish="length")), para(" C.")]  # recap 1
    for i in range(6):  # the threshold grew from 1 to 6 negative paragraphs
        script += [*negative, para(f" D{i}.")]
    script += [("large", Reply(" Done.\n</think>")), ANSWER]  # recap 2
    sampler = SequenceSampler(script)
    ran = await run_steps(SPEC, sampler, recap_after_negative=1, recap_tokens=190)
    calls = [(s.role, s.params["max_tokens"]) for s in sampler.sent]
    rounds = [("small", 20), ("large", 20), ("small", 1024)]
    assert calls == [
        ("small", 1024), *rounds, ("large", 190), ("small", 1024), *rounds * 6, ("large", 200),
        ("large", 2048),
    ]  # fmt: skip
    first_recap = sampler.sent[4].prompt
    assert first_recap == LARGE + "A.\n\nhmm, wait B.\n\n" + RECAP_WORDS
    by = [s["by"] for s in ran.report["steps"]]
    assert by == ["small", "large", "recap", *["large"] * 6, "recap"]
    assert ran.report["steps"][2]["text"] == RECAP_WORDS + " All fine. C."
    assert ran.report["steps"][2]["tokens"] == 2 + 1  # the recap words were not generated
    assert ran.outcome.reasoning.endswith("\n\n" + RECAP_WORDS + " Done.")
    assert ran.report["stopped"] == "end_of_thinking"
    assert ran.outcome.decisions == {"small": 1, "large": 7, "recap": 2, "verify": 0}


def test_the_recap_and_its_threshold_grow_to_their_ceilings() -> None:
    assert [_grown(v, 25, 200) for v in (125, 175, 190, 200, 250)] == [150, 200, 200, 200, 250]
    assert [_grown(v, 5, 30) for v in (15, 25, 28, 30, 40)] == [20, 30, 30, 30, 40]


@pytest.mark.parametrize(
    ("script", "stopped", "reasoning"),
    [
        ([para("A.\n</think>")], "end_of_thinking", "A."),
        ([para("so boxed{7}")], "answer", "so boxed{7}"),
        ([para("A.", eos=True)], "eos", "A."),
        ([para("A."), probe("small", "yes"), probe("large", "Yes. </think> 7")],
         "end_of_thinking", "A.\n\nYes."),
    ],
)  # fmt: skip
async def test_the_thinking_stops_at_its_end_an_answer_or_eos(
    script: list[tuple[str, Reply]], stopped: str, reasoning: str
) -> None:
    sampler = SequenceSampler([*script, ANSWER])
    ran = await run_steps(SPEC, sampler)
    assert ran.report["stopped"] == stopped and ran.outcome.reasoning == reasoning
    assert sampler.sent[-1].prompt == LARGE + reasoning + "\n</think>\n\n"


async def test_a_paragraph_without_a_break_is_continued_without_a_probe() -> None:
    sampler = SequenceSampler([para("a b", finish="length"), para(" c."), ANSWER])
    ran = await run_steps(SPEC, sampler, step_tokens=2, max_steps=1)
    assert [s.prompt for s in sampler.sent[:2]] == [SMALL, SMALL + "a b"]
    assert ran.outcome.reasoning == "a b c." and len(ran.report["steps"]) == 1
    assert ran.report["steps"][0]["tokens"] == 3


async def test_the_token_budget_and_a_thinking_budget_cut_every_call() -> None:
    sampler = SequenceSampler([para("a b"), probe("small", "so"), para("c"), ("large", Reply("7"))])
    ran = await run_steps(SPEC, sampler, thinking=ThinkingBudget(3, 50), token_budget=100)
    assert [s.params["max_tokens"] for s in sampler.sent] == [3, 1, 1, 50]
    assert ran.report["stopped"] == "token_budget" and ran.report["kept_tokens"] == 3
    assert ran.outcome.reasoning == "a b\n\nc"
    sampler = SequenceSampler([para("a b c"), ANSWER])
    ran = await run_steps(SPEC, sampler, token_budget=3)
    assert sampler.sent[0].params["max_tokens"] == 3 and ran.report["stopped"] == "token_budget"


async def test_the_requests_budget_ends_with_the_kept_thinking_and_no_answer() -> None:
    sampler = SequenceSampler([para("a b"), probe("small", "so so")], budget_tokens=3)
    ran = await run_steps(SPEC, sampler)
    assert ran.outcome.reasoning == "a b" and ran.outcome.content == ""
    assert ran.outcome.truncated and ran.report["stopped"] == "budget_tokens"


def test_worst_case_bounds_every_call() -> None:
    params = SPEC.parse(
        {"max_steps": 4, "step_tokens": 10, "token_budget": 30, "answer_tokens": 20}
    )
    bound = SPEC.bound(params, 100, 0)
    calls = 4 + 30 // 10 + 1
    assert bound.completion_tokens == calls * (10 + 2 * 20 + 200) + 20
    context = 100 + 30 + len("<think></think>" + RECAP_WORDS) + 8
    assert bound.prompt_tokens == (4 * calls + 1) * context


@pytest.mark.parametrize(
    ("params", "param"),
    [({"probe_tokens": 0}, "probe_tokens"), ({"choose_large": "maybe"}, "choose_large"),
     ({"recap_after_negative": 0}, "recap_after_negative"), ({"max_steps": 0}, "max_steps")],
)  # fmt: skip
def test_parameters_are_checked(params: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParameter) as error:
        SPEC.parse(params)
    assert error.value.param == param
