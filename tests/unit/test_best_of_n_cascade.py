"""``best_of_n`` and ``cascade`` decision rules, pinned with a scripted sampler (no HTTP).

The ``RoleSampler`` extends ``test_strategy_rules.ScriptedSampler``: each role (``None`` for the
requested model's pool, ``small``, ``large``) plays its own per-sample script on a virtual clock,
tokens carry log-probs, and each ``judge`` call is answered by a function of its prompt, so
a test decides which candidate gets which score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from strategies import (
    InvalidParameter,
    StrategyOutcome,
    StrategySpec,
    StrategyTask,
    best_of_n,
    cascade,
)
from strategies.best_of_n import JUDGE_PARAMS, judge_score
from strategies.cascade import chow_score
from strategies.sampling import RoleName, SampleRequest
from tests.scripted import RoleSampler, Scripted


async def run(
    spec: StrategySpec, sampler: RoleSampler, **params: Any
) -> tuple[StrategyOutcome, list[int]]:
    assert spec.run is not None
    decided: list[int] = []
    task = StrategyTask(
        request=SampleRequest(messages=[{"role": "user", "content": "q"}], params={"seed": 1}),
        params=spec.parse(params),
        sampler=sampler,
        decided=lambda: decided.append(len(sampler.calls)),
    )
    return await spec.run(task), decided


def judge_by_candidate(scores: dict[str, int]) -> Callable[[str], Scripted]:
    """A judge whose greedy digit is ``scores[candidate text]`` (top-1 = that digit only)."""

    def judge(prompt: str) -> Scripted:
        for text, score in scores.items():
            if f"Response to evaluate:\n{text}\n" in prompt:
                return Scripted(str(score), top={str(score): 0.0, "x": -2.0})
        raise AssertionError(f"unexpected judge prompt {prompt!r}")

    return judge


# -- judge scores -----------------------------------------------------------------------------
def test_judge_score_is_the_probability_weighted_mean_of_the_digit_tokens() -> None:
    top = {"7": math.log(0.6), " 8": math.log(0.2), "the": math.log(0.15), "10": math.log(0.05)}
    # digits renormalised among themselves: (7*0.6 + 8*0.2) / 0.8
    assert judge_score("7", top) == pytest.approx(7.25)


def test_judge_score_falls_back_to_the_sampled_digit_then_to_zero() -> None:
    assert judge_score(" 6", {}) == 6.0
    assert judge_score(" 6", {"Sure": -0.1, "I": -1.0}) == 6.0
    assert judge_score("Sure", {"Sure": -0.1, "I": -1.0}) == 0.0
    assert judge_score("", {}) == 0.0


# -- best_of_n ---------------------------------------------------------------------------------
async def test_best_of_n_returns_the_candidate_the_judge_scores_highest() -> None:
    sampler = RoleSampler(
        {None: [Scripted("answer 1"), Scripted("answer 2", 1.5), Scripted("answer 3", 0.5)]},
        judge=judge_by_candidate({"answer 1": 3, "answer 2": 8, "answer 3": 4}),
    )
    outcome, decided = await run(best_of_n.SPEC, sampler, k=3)
    assert outcome.winner == 1
    assert outcome.content == "answer 2"
    assert outcome.answer == "2"
    assert outcome.report["scores"] == [  # in finish order
        {"sample": 2, "score": 4.0, "answer": "3"},
        {"sample": 0, "score": 3.0, "answer": "1"},
        {"sample": 1, "score": 8.0, "answer": "2"},
    ]
    # k samples on the request's own pool, then one judge call per candidate
    assert sampler.roles() == [(None, 3), ("judge", 1), ("judge", 1), ("judge", 1)]
    judge_call = sampler.calls[1]
    assert judge_call.request.params == JUDGE_PARAMS
    assert JUDGE_PARAMS == {"temperature": 0, "max_tokens": 1, "logprobs": True, "top_logprobs": 10}
    assert judge_call.request.messages is not None
    assert "[user]\nq" in judge_call.request.messages[0]["content"]
    assert decided == [4]  # decided once every judge has answered


async def test_best_of_n_tie_goes_to_the_candidate_that_finished_first() -> None:
    sampler = RoleSampler(
        {None: [Scripted("answer 1", 2.0), Scripted("answer 2", 1.0), Scripted("answer 3", 3.0)]},
        judge=judge_by_candidate({"answer 1": 9, "answer 2": 9, "answer 3": 9}),
    )
    outcome, _ = await run(best_of_n.SPEC, sampler, k=3)
    assert outcome.winner == 1


async def test_best_of_n_unparseable_answers_compete_without_the_majority_filter() -> None:
    script: dict[RoleName | None, list[Scripted]] = {
        None: [
            Scripted("so 5"),
            Scripted("no idea"),  # no answer, judged best
            Scripted("thus 9"),  # a unique answer, judged second best
            Scripted("it is 5"),
        ]
    }
    scores = {"so 5": 2, "no idea": 9, "thus 9": 8, "it is 5": 6}
    plain, _ = await run(best_of_n.SPEC, RoleSampler(script, judge_by_candidate(scores)), k=4)
    assert plain.content == "no idea" and plain.answer is None

    # Best-of-Majority: only "5" (2 of 4) reaches alpha = 0.5; its best-scored member wins
    bom, _ = await run(
        best_of_n.SPEC, RoleSampler(script, judge_by_candidate(scores)), k=4, alpha=0.5
    )
    assert bom.content == "it is 5" and bom.winner == 3
    assert bom.report["eligible"] == [0, 3]
    assert bom.votes == {"5": 2, "9": 1}


async def test_best_of_majority_falls_back_to_every_candidate_when_no_answer_is_frequent() -> None:
    sampler = RoleSampler(
        {None: [Scripted("so 1"), Scripted("so 2"), Scripted("so 3")]},
        judge_by_candidate({"so 1": 1, "so 2": 7, "so 3": 3}),
    )
    outcome, _ = await run(best_of_n.SPEC, sampler, k=3, alpha=0.5)
    assert outcome.answer == "2"
    assert outcome.report["bom_fallback"] is True
    assert outcome.report["eligible"] == [0, 1, 2]


async def test_best_of_n_a_judge_without_a_digit_scores_zero() -> None:
    def judge(prompt: str) -> Scripted:
        if "so 1" in prompt:
            return Scripted("Great", top={"Great": -0.1, "Good": -2.0})
        return Scripted("1", top={"1": -0.5, "2": -0.9})

    sampler = RoleSampler({None: [Scripted("so 1"), Scripted("so 2", 2.0)]}, judge)
    outcome, _ = await run(best_of_n.SPEC, sampler, k=2)
    scores = {s["sample"]: s["score"] for s in outcome.report["scores"]}
    assert scores[0] == 0.0
    assert 1.0 < scores[1] < 2.0  # a mixture of 1 and 2
    assert outcome.winner == 1


async def test_best_of_n_budget_exhaustion_answers_with_what_was_judged() -> None:
    sampler = RoleSampler(
        {None: [Scripted("so 1"), Scripted("a b c d e f g h so 2")]},
        judge_by_candidate({"so 1": 4}),
        budget_tokens=5,
    )
    outcome, _ = await run(best_of_n.SPEC, sampler, k=2)
    assert outcome.truncated
    assert outcome.content == "so 1"


def test_best_of_n_parameters() -> None:
    assert best_of_n.SPEC.parse({}) == {"k": 4, "alpha": 0.0}
    with pytest.raises(InvalidParameter) as caught:
        best_of_n.SPEC.parse({"alpha": "1.5"})
    assert caught.value.param == "alpha"


# -- cascade: agreement ------------------------------------------------------------------------
FOUR = Scripted("answer 4")
FIVE = Scripted("answer 5")
LARGE: dict[RoleName | None, list[Scripted]] = {
    "large": [Scripted("big answer 7"), Scripted("big answer 8", 2.0), Scripted("big 7", 3.0)]
}


async def test_cascade_accepts_a_unanimous_small_model_by_default() -> None:
    sampler = RoleSampler({"small": [FOUR, FOUR, FOUR], **LARGE})
    outcome, decided = await run(cascade.SPEC, sampler)
    assert outcome.answer == "4"
    assert outcome.report["escalated"] is False
    assert outcome.report["agreement"] == 1.0
    assert sampler.roles() == [("small", 3)]  # default k=3, tau=1.0
    assert decided == [1]


async def test_cascade_escalates_just_below_tau_and_accepts_exactly_at_it() -> None:
    small = {"small": [FOUR, FOUR, FIVE, FOUR], **LARGE}  # agreement 3/4
    at_tau = RoleSampler(small)
    outcome, _ = await run(cascade.SPEC, at_tau, k=4, tau=0.75)
    assert outcome.report["escalated"] is False and outcome.answer == "4"
    assert at_tau.roles() == [("small", 4)]

    above = RoleSampler(small)
    outcome, _ = await run(cascade.SPEC, above, k=4, tau=math.nextafter(0.75, 1.0))
    assert outcome.report["escalated"] is True
    assert above.roles() == [("small", 4), ("large", 1)]  # escalate_to=single: one sample
    assert outcome.content == "big answer 7" and outcome.answer == "7"
    assert outcome.report["small"]["votes"] == {"4": 3, "5": 1}
    assert outcome.report["agreement"] == 0.75


async def test_cascade_default_escalates_when_two_of_three_agree() -> None:
    sampler = RoleSampler({"small": [FOUR, FIVE, FOUR], **LARGE})
    outcome, _ = await run(cascade.SPEC, sampler)
    assert outcome.report["escalated"] is True
    assert outcome.report["agreement"] == pytest.approx(2 / 3, abs=1e-4)


async def test_cascade_without_any_answer_escalates() -> None:
    sampler = RoleSampler({"small": [Scripted("hmm"), Scripted("no idea")], **LARGE})
    outcome, _ = await run(cascade.SPEC, sampler, k=2, tau=0.0)
    assert outcome.report["escalated"] is True
    assert outcome.report["agreement"] == 0.0


async def test_cascade_escalation_runs_the_named_strategy_on_the_large_pool() -> None:
    sampler = RoleSampler({"small": [FOUR, FIVE, Scripted("answer 6")], **LARGE})
    outcome, decided = await run(cascade.SPEC, sampler, escalate_to="majority_vote", large_k=3)
    assert sampler.roles() == [("small", 3), ("large", 3)]
    assert sampler.calls[1].request.params == {"seed": 1}  # the client's own request
    assert outcome.answer == "7"  # large majority: 7, 8, 7
    assert outcome.votes == {"7": 2, "8": 1}
    large = outcome.report["large"]
    assert large["strategy"] == "majority_vote"
    assert large["parameters"] == {"k": 3}
    assert large["votes"] == {"7": 2, "8": 1}
    assert outcome.report["small"]["votes"] == {"4": 1, "5": 1, "6": 1}
    assert decided == [2]  # the large strategy decided, once


async def test_cascade_large_k_defaults_to_the_escalation_strategy_k() -> None:
    sampler = RoleSampler(
        {"small": [FOUR, FIVE, FOUR], "large": [Scripted(f"big {i % 2}") for i in range(8)]}
    )
    outcome, _ = await run(cascade.SPEC, sampler, escalate_to="short_m_at_k")
    assert sampler.roles() == [("small", 3), ("large", 8)]
    assert outcome.report["large"]["parameters"] == {"k": 8, "m": 3}


def test_cascade_rejects_a_large_k_its_escalation_strategy_cannot_take() -> None:
    for given in (
        {"escalate_to": "short_m_at_k", "large_k": "2"},  # m=3 > k=2
        {"escalate_to": "single", "large_k": "3"},
    ):
        with pytest.raises(InvalidParameter) as caught:
            cascade.SPEC.parse(given)
        assert caught.value.param == "large_k"


async def test_cascade_does_not_escalate_once_the_budget_is_spent() -> None:
    sampler = RoleSampler(
        {"small": [FOUR, Scripted("x y z w answer 5"), FOUR], **LARGE}, budget_tokens=4
    )
    outcome, _ = await run(cascade.SPEC, sampler)
    assert outcome.truncated
    assert outcome.report["escalated"] is False
    assert sampler.roles() == [("small", 3)]


# -- cascade: token confidence -----------------------------------------------------------------
def test_chow_scores() -> None:
    lps = [-0.1, -0.2, -3.0, -0.3, -0.4]
    assert chow_score(lps, "mean", 0.0) == pytest.approx(-0.8)
    assert chow_score(lps, "quantile", 0.0) == -3.0  # the least confident token
    assert chow_score(lps, "quantile", 0.25) == -0.4  # sorted[1]
    assert chow_score(lps, "quantile", 0.125) == pytest.approx(-1.7)  # halfway to sorted[1]
    assert chow_score(lps, "quantile", 1.0) == -0.1
    assert chow_score([], "mean", 0.0) is None


async def test_cascade_confidence_mean_accepts_at_the_threshold_and_escalates_below() -> None:
    confident = Scripted("the answer is 4", logprobs=[-0.5, -1.5])  # mean -1.0
    script = {"small": [confident], **LARGE}

    at = RoleSampler(script)
    outcome, _ = await run(cascade.SPEC, at, k=1, rule="confidence", threshold=-1.0)
    assert outcome.report["escalated"] is False
    assert outcome.report["confidence"] == -1.0
    assert outcome.content == "the answer is 4"
    assert at.calls[0].request.params == {"seed": 1, "logprobs": True}

    below = RoleSampler(script)
    outcome, _ = await run(
        cascade.SPEC, below, k=1, rule="confidence", threshold=math.nextafter(-1.0, 0.0)
    )
    assert outcome.report["escalated"] is True
    assert below.roles() == [("small", 1), ("large", 1)]
    assert below.calls[1].request.params == {"seed": 1}  # no forced logprobs for the large


async def test_cascade_confidence_quantile_scores_the_majority_winner() -> None:
    script: dict[RoleName | None, list[Scripted]] = {
        "small": [
            Scripted("shaky answer is 4", logprobs=[-0.1, -2.5, -0.1, -0.1]),
            Scripted("answer 5", 0.5, logprobs=[-0.01]),  # finishes first, loses the vote
            Scripted("again 4", 2.0, logprobs=[-0.01]),
        ],
        **LARGE,
    }
    params: dict[str, Any] = {"rule": "confidence", "confidence_method": "quantile", "alpha": 0}
    accepted, _ = await run(cascade.SPEC, RoleSampler(script), threshold=-2.5, **params)
    assert accepted.report["escalated"] is False
    assert accepted.report["confidence"] == -2.5  # min of the winner's (sample 0) tokens
    assert accepted.winner == 0

    deferred, _ = await run(cascade.SPEC, RoleSampler(script), threshold=-2.4, **params)
    assert deferred.report["escalated"] is True
    assert deferred.content == "big answer 7"


def test_cascade_parameters() -> None:
    assert cascade.SPEC.parse({}) == {
        "k": 3,
        "rule": "agreement",
        "tau": 1.0,
        "confidence_method": "mean",
        "alpha": 0.1,
        "threshold": -1.0,
        "escalate_to": "single",
        "large_k": None,
    }
    with pytest.raises(InvalidParameter) as caught:
        cascade.SPEC.parse({"escalate_to": "cascade"})
    assert caught.value.param == "escalate_to"
