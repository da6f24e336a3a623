"""``deepconf`` pinned exactly on hand-computed confidences: token confidence, the sliding
window, the threshold percentile, the kill at the first window below it (and its tokens
billed), the confidence-weighted consensus stop, offline filtering, budgets (scripted sampler).

Every confidence here is a dyadic fraction, so the arithmetic is exact in floating point.
"""

from __future__ import annotations

from typing import Any

import pytest

from strategies import REGISTRY, InvalidParameter, StrategyOutcome, StrategyTask
from strategies.deepconf import STICKY_KEY, GroupConfidence, percentile, token_confidence
from strategies.sampling import BudgetName, SampleRequest
from tests.scripted import RoleSampler, Scripted

SPEC = REGISTRY["deepconf"]


def test_token_confidence_is_minus_the_mean_top_logprob() -> None:
    # -(-0.5 - 1.25 - 2.75 - 3.5) / 4 = 8 / 4
    assert token_confidence({"a": -0.5, "b": -1.25, "c": -2.75, "d": -3.5}) == 2.0
    assert token_confidence({"a": -0.5, "b": -1.5}) == 1.0
    assert token_confidence({"a": 0.0}) == 0.0  # certain
    assert token_confidence({}) is None


def test_group_confidence_slides_over_full_windows_and_keeps_the_lowest() -> None:
    group = GroupConfidence(window=2)
    # token confidences 2, 1, 0.5, 1.5, 3 -> windows (2+1)/2, (1+0.5)/2, (0.5+1.5)/2, (1.5+3)/2
    assert [group.add(c) for c in (2.0, 1.0, 0.5, 1.5, 3.0)] == [None, 1.5, 0.75, 1.0, 2.25]
    assert group.score == 0.75 and group.tokens == 5


def test_a_trace_shorter_than_the_window_scores_its_mean() -> None:
    group = GroupConfidence(window=4)
    assert [group.add(c) for c in (2.0, 1.0, 0.5)] == [None, None, None]
    assert group.score == 3.5 / 3
    assert GroupConfidence(window=4).score is None


def test_the_running_window_sum_stays_exact_over_a_long_trace() -> None:
    group = GroupConfidence(window=3)
    values = [0.1 * (i % 7) for i in range(10_000)]
    for value in values:
        last = group.add(value)
    assert last == pytest.approx(sum(values[-3:]) / 3, abs=1e-12)


def test_percentile_interpolates_between_order_statistics_as_numpy() -> None:
    minima = [4.0, 1.0, 3.0, 2.0, 5.0]
    # q=90: position 0.9 * 4 = 3.6 -> 4 + 0.6 * (5 - 4); q=10: 0.4 -> 1 + 0.4 * (2 - 1)
    assert percentile(minima, 90) == pytest.approx(4.6, abs=1e-12)
    assert percentile(minima, 10) == pytest.approx(1.4, abs=1e-12)
    assert percentile(minima, 50) == 3.0
    assert percentile([2.5], 90) == 2.5


def tops(*confidences: float) -> list[dict[str, float]]:
    """Per-token top-2 logprobs whose token confidence is each given value: -((-(c - 0.5)) +
    (-(c + 0.5))) / 2 = c."""
    return [{"x": -(c - 0.5), "y": -(c + 0.5)} for c in confidences]


def trace(text: str, *confidences: float, delay: float = 1.0) -> Scripted:
    """A trace whose token confidences cycle through ``confidences``."""
    return Scripted(text, delay, tops=tops(*confidences))


async def run(
    script: list[Scripted],
    budget_tokens: int | None = None,
    budget_reason: BudgetName = "tokens",
    **params: Any,
) -> tuple[StrategyOutcome, RoleSampler, list[int]]:
    assert SPEC.run is not None
    sampler = RoleSampler(
        {None: script}, budget_tokens=budget_tokens, budget_reason=budget_reason, draw=True
    )
    decided: list[int] = []
    task = StrategyTask(
        request=SampleRequest(messages=[{"role": "user", "content": "q"}], params={"seed": 1}),
        params=SPEC.parse(params),
        sampler=sampler,
        decided=lambda: decided.append(len(sampler.calls)),
    )
    return await SPEC.run(task), sampler, decided


# Warm-up: lowest group confidences 3, 2, 1, 0.5 -> the 50th percentile is 1 + 0.5 * (2 - 1)
WARMUP = [
    trace("the answer is 7", 3.0),
    trace("the answer is 5", 2.0),
    trace("the answer is 5", 1.0),
    trace("the answer is 7", 0.5),
]


async def test_online_kills_a_trace_at_its_first_window_below_the_threshold() -> None:
    script = [
        *WARMUP,  # threshold 1.5; trace 0 (7: 3.0) and trace 1 (5: 2.0) vote: consensus 0.6
        # wave 1: token 1 alone is 0.5 (< 1.5, but no full window yet); windows of two:
        # (0.5+3)/2 = 1.75, (3+2)/2 = 2.5, (2+0.5)/2 = 1.25 < 1.5 -> killed at token 4
        trace("so the sum of it all is 5 I think", 0.5, 3.0, 2.0, 0.5, 0.5),
        trace("the answer is 7", 2.5, delay=1.5),  # 7: 5.5 of 7.5 = 0.733
        # wave 2: 7 reaches 9.5 of 11.5 = 0.826 >= 0.8: stop, the slower trace is cancelled
        trace("the answer is 7", 4.0),
        trace("it is 5 for sure yes it is 5", 4.0, delay=1.5),
        trace("never started 5", 4.0),
    ]
    outcome, sampler, decided = await run(
        script, k=10, warmup=4, wave=2, window=2, eta=50, consensus=0.8, top_logprobs=2
    )
    calls = [(c.k, c.request.separate, c.request.sticky_key) for c in sampler.calls]
    assert calls == [(4, False, STICKY_KEY), (2, True, STICKY_KEY), (2, True, STICKY_KEY)]
    assert all(
        c.request.params == {"seed": 1, "logprobs": True, "top_logprobs": 2} for c in sampler.calls
    )
    report = outcome.report
    assert report["threshold"] == 1.5
    assert (report["stopped"], report["launched"], report["finished"]) == ("consensus", 8, 6)
    assert (report["killed"], report["cancelled"], report["voted"]) == (1, 1, 4)
    assert report["weights"] == {"7": 9.5, "5": 2.0}
    assert report["consensus"] == round(9.5 / 11.5, 4)
    killed = report["traces"][4]
    assert killed == {
        "trace": 4,
        "phase": "online",
        "tokens": 4,
        "confidence": 1.25,
        "finish_reason": "abort",
        "killed_at": 4,
        "answer": None,
        "voted": False,
    }
    assert sampler.batches[1].tokens == [4, 4]  # billed up to the kill, not a token more
    assert [t["confidence"] for t in report["traces"]] == [3.0, 2.0, 1.0, 0.5, 1.25, 2.5, 4.0, 4.0]
    assert [t["voted"] for t in report["traces"]] == [True, True] + [False] * 3 + [
        True,
        True,
        False,
    ]
    assert sampler.batches[2].cancelled == {0, 1} and sampler.batches[2].tokens == [4, 2]
    assert (outcome.answer, outcome.winner, outcome.votes) == ("7", 0, {"7": 3, "5": 1})
    assert outcome.content == "the answer is 7"
    assert outcome.decisions == {"stopped_consensus": 1, "killed": 1}
    assert decided[0] == 3  # decided during the third call


@pytest.mark.parametrize(("eta", "threshold", "answer"), [(10, 4.6, "2"), (90, 1.4, "1")])
async def test_threshold_is_the_100_minus_eta_percentile_of_the_warmup_minima(
    eta: float, threshold: float, answer: str
) -> None:
    script = [trace(f"the answer is {1 if c < 5 else 2}", c) for c in (3.0, 1.0, 5.0, 2.0, 4.0)]
    outcome, _, _ = await run(script, k=5, warmup=5, window=2, eta=eta)
    report = outcome.report
    assert report["threshold"] == threshold
    voted = [t["confidence"] for t in report["traces"] if t["voted"]]
    # DeepConf-low keeps the top 10% (one trace of five), DeepConf-high the top 90%
    assert voted == ([5.0] if eta == 10 else [3.0, 5.0, 2.0, 4.0])
    assert outcome.answer == answer  # high: 1 has 3 + 2 + 4 = 9 against 2's 5
    # the warm-up used all k; consensus is checked only as later traces finish
    assert report["stopped"] == "k"


async def test_a_unanimous_warmup_still_launches_a_wave_before_consensus_can_stop_it() -> None:
    """With eta 10 about one warm-up trace in ten votes, and one voter is unanimous: the
    paper checks consensus as traces finish after the warm-up, so one wave always runs."""
    script = [trace(f"the answer is {1 if c < 5 else 2}", c) for c in (3.0, 1.0, 5.0, 2.0, 4.0)]
    script += [trace("the answer is 2", 6.0), trace("the answer is 2", 6.0)]
    outcome, sampler, _ = await run(script, k=7, warmup=5, wave=2, window=2, eta=10)
    assert len(sampler.batches) == 2 and sampler.batches[1].k == 2
    assert outcome.report["stopped"] == "consensus" and outcome.answer == "2"


async def test_a_trace_shorter_than_its_window_finishes_but_does_not_vote_below_the_bar() -> None:
    script = [*WARMUP, trace("the answer is 5", 0.5), trace("the answer is 7", 0.5)]
    outcome, _, _ = await run(script, k=6, warmup=4, wave=2, window=8, eta=50)
    report = outcome.report
    # window 8: every trace is shorter, so its score is its mean (3, 2, 1, 0.5 as before)
    assert report["threshold"] == 1.5
    short = report["traces"][4]
    assert (short["killed_at"], short["finish_reason"], short["voted"]) == (None, "stop", False)
    assert (report["killed"], report["stopped"], report["weights"]) == (0, "k", {"7": 3, "5": 2})


async def test_a_failed_warmup_trace_has_no_say_in_the_threshold() -> None:
    failed = Scripted("the answer is 2", finish="error", tops=tops(0.5))
    script = [trace("the answer is 2", 1.0), trace("the answer is 2", 3.0), failed]
    outcome, _, _ = await run(script, k=3, warmup=3, window=2, eta=50)
    # the 50th percentile of 1 and 3 (with the failed trace's 0.5 it would be 1)
    assert outcome.report["threshold"] == 2.0
    assert outcome.report["weights"] == {"2": 3.0}


async def test_offline_runs_all_k_then_filters_and_weights() -> None:
    script = [
        trace("the answer is 7", 1.0),
        trace("the answer is 5", 1.5),
        trace("the answer is 5", 2.0),
        trace("the answer is 7", 0.5),
        trace("no answer here", 3.0),  # no answer: not in the percentile, no vote
    ]
    outcome, sampler, _ = await run(script, k=5, window=2, eta=50, mode="offline")
    assert [(c.k, c.request.separate, c.request.sticky_key) for c in sampler.calls] == [
        (5, False, None)
    ]
    report = outcome.report
    # scores with an answer: 1, 1.5, 2, 0.5 -> 50th percentile 1 + 0.5 * (1.5 - 1) = 1.25
    assert report["threshold"] == 1.25
    assert (report["stopped"], report["finished"], report["killed"]) == ("k", 5, 0)
    assert report["weights"] == {"5": 3.5}
    # a plain majority would tie 7 and 5 and take 7, the first voted
    assert (outcome.answer, outcome.winner) == ("5", 1)


async def test_without_top_logprobs_the_warmup_majority_answers() -> None:
    script = [Scripted("the answer is 2"), Scripted("the answer is 3"), Scripted("the answer is 3")]
    outcome, sampler, _ = await run(script, k=8, warmup=3)
    assert len(sampler.calls) == 1
    report = outcome.report
    assert (report["stopped"], report["threshold"], report["voted"]) == ("no_logprobs", None, 0)
    assert (outcome.answer, outcome.winner) == ("3", 1)
    assert outcome.decisions == {"stopped_no_logprobs": 1}


@pytest.mark.parametrize("reason", ["tokens", "deadline", "cost"])
async def test_a_budget_in_the_online_phase_answers_with_the_votes_so_far(
    reason: BudgetName,
) -> None:
    script = [*WARMUP, trace(" ".join(["w"] * 50), 2.0), trace(" ".join(["w"] * 50), 2.0)]
    # 16 warm-up tokens, then 6 of the wave
    outcome, sampler, _ = await run(
        script, budget_tokens=22, budget_reason=reason, k=8, warmup=4, wave=2, window=2, eta=50
    )
    report = outcome.report
    assert outcome.truncated and report["stopped"] == f"budget_{reason}"
    assert (report["launched"], report["finished"], report["cancelled"]) == (6, 4, 2)
    assert (outcome.answer, outcome.votes) == ("7", {"7": 1, "5": 1})  # 3.0 against 2.0
    assert sum(b.emitted for b in sampler.batches) == 22
    assert outcome.decisions == {f"stopped_budget_{reason}": 1}


async def test_a_budget_in_the_warmup_leaves_no_threshold_and_a_plain_majority() -> None:
    script = [
        trace("the answer is 4", 1.0),
        trace("the answer is 4", 1.0, delay=1.2),
        trace("I say 6 " + "and so on " * 20, 3.0),
    ]
    outcome, _, _ = await run(script, budget_tokens=12, k=8, warmup=3, window=2)
    report = outcome.report
    assert (report["stopped"], report["threshold"], report["finished"]) == (
        "budget_tokens",
        None,
        2,
    )
    assert outcome.truncated and (outcome.answer, outcome.winner) == ("4", 0)


@pytest.mark.parametrize(
    ("given", "param"),
    [
        ({"k": 0}, "k"),
        ({"k": 65}, "k"),
        ({"k": 8, "warmup": 9}, "warmup"),
        ({"eta": 0}, "eta"),
        ({"eta": 100}, "eta"),
        ({"eta": -5}, "eta"),
        ({"window": 0}, "window"),
        ({"consensus": 0}, "consensus"),
        ({"consensus": 1.01}, "consensus"),
        ({"mode": "batch"}, "mode"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"wave": 0}, "wave"),
    ],
)
def test_bad_parameters_are_named(given: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        SPEC.parse(given)
    assert caught.value.param == param


def test_defaults() -> None:
    assert SPEC.parse({}) == {
        "k": 32,
        "warmup": 16,
        "eta": 10.0,
        "window": 64,
        "consensus": 0.95,
        "wave": 4,
        "top_logprobs": 20,
        "mode": "online",
    }
