"""``adaptive_consistency`` pinned exactly: the Beta criterion against closed forms, when each
stopping rule stops, what it reports and bills, and how budgets cut it (scripted sampler)."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest

from strategies import REGISTRY, InvalidParameter, StrategyOutcome, StrategyTask
from strategies.adaptive_consistency import STICKY_KEY, beta_probability, top_two
from strategies.sampling import BudgetName, SampleRequest
from tests.scripted import RoleSampler, Scripted

SPEC = REGISTRY["adaptive_consistency"]


def binomial_tail(v1: int, v2: int) -> Fraction:
    """P(p > 1/2) for p ~ Beta(v1+1, v2+1) in closed form: for integer shapes,
    P(Beta(a, b) <= x) = P(Binomial(a+b-1, x) >= a), so with n = v1+v2+1
    P(p > 1/2) = P(Binomial(n, 1/2) <= v1) = sum_{j<=v1} C(n, j) / 2^n."""
    n = v1 + v2 + 1
    return Fraction(sum(math.comb(n, j) for j in range(v1 + 1)), 2**n)


def exact_integral_ratio(v1: int, v2: int) -> Fraction:
    """The paper's ratio int_{1/2}^1 / int_0^1 of x^v1 (1-x)^v2, integrated term by term in
    exact rationals: (1-x)^v2 = sum_i C(v2, i) (-x)^i."""

    def integral(low: Fraction, high: Fraction) -> Fraction:
        return sum(
            (
                Fraction(math.comb(v2, i) * (-1) ** i, v1 + i + 1)
                * (high ** (v1 + i + 1) - low ** (v1 + i + 1))
                for i in range(v2 + 1)
            ),
            Fraction(0),
        )

    return integral(Fraction(1, 2), Fraction(1)) / integral(Fraction(0), Fraction(1))


# Hand-computed: n = v1+v2+1 and sum_{j<=v1} C(n, j) / 2^n.
BETA_BY_HAND = {
    (1, 0): Fraction(3, 4),  # n=2: (1+2)/4
    (2, 0): Fraction(7, 8),  # n=3: (1+3+3)/8
    (3, 0): Fraction(15, 16),  # n=4: 1 - 1/16
    (4, 0): Fraction(31, 32),  # n=5: 1 - 1/32 = 0.96875 >= 0.95: stop
    (1, 1): Fraction(1, 2),  # n=3: (1+3)/8
    (2, 1): Fraction(11, 16),  # n=4: (1+4+6)/16
    (3, 1): Fraction(13, 16),  # n=5: (1+5+10+10)/32 = 0.8125 < 0.95: go on
    (4, 1): Fraction(57, 64),  # n=6: 1 - (6+1)/64
    (5, 1): Fraction(15, 16),  # n=7: 1 - (7+1)/128 = 0.9375
    (6, 1): Fraction(247, 256),  # n=8: 1 - (8+1)/256 = 0.96484375
}


@pytest.mark.parametrize(("counts", "expected"), list(BETA_BY_HAND.items()))
def test_beta_criterion_matches_the_hand_computed_values(
    counts: tuple[int, int], expected: Fraction
) -> None:
    assert binomial_tail(*counts) == expected == exact_integral_ratio(*counts)
    assert beta_probability(*counts) == pytest.approx(float(expected), abs=1e-14)


def test_beta_criterion_stops_at_4_0_and_not_at_3_1() -> None:
    assert beta_probability(4, 0) == pytest.approx(0.96875, abs=1e-14)
    assert beta_probability(4, 0) >= 0.95
    assert beta_probability(3, 1) == pytest.approx(0.8125, abs=1e-14)
    assert beta_probability(3, 1) < 0.95


def test_beta_quadrature_is_exact_for_every_count_pair_up_to_k_64() -> None:
    worst = max(
        abs(beta_probability(v1, v2) - float(binomial_tail(v1, v2)))
        for v1 in range(65)
        for v2 in range(v1 + 1)
        if v1 + v2 <= 64
    )
    assert worst < 1e-13


def test_top_two_counts() -> None:
    assert top_two({"a": 2, "b": 5, "c": 3}) == (5, 3)
    assert top_two({"a": 4}) == (4, 0)
    assert top_two({"a": 2, "b": 2}) == (2, 2)


def answer(text: str, delay: float = 1.0) -> Scripted:
    return Scripted(f"the answer is {text}", delay)


async def run(
    script: list[Scripted],
    budget_tokens: int | None = None,
    budget_reason: BudgetName = "tokens",
    **params: Any,
) -> tuple[StrategyOutcome, RoleSampler]:
    assert SPEC.run is not None
    sampler = RoleSampler(
        {None: script}, budget_tokens=budget_tokens, budget_reason=budget_reason, draw=True
    )
    task = StrategyTask(
        request=SampleRequest(messages=[{"role": "user", "content": "q"}], params={"seed": 3}),
        params=SPEC.parse(params),
        sampler=sampler,
        decided=lambda: None,
    )
    return await SPEC.run(task), sampler


async def test_beta_rule_stops_at_four_unanimous_answers() -> None:
    outcome, sampler = await run([answer("3")] * 8, k=16)
    assert [c.k for c in sampler.calls] == [2, 2]  # two waves of two
    assert all(c.request.sticky_key == STICKY_KEY for c in sampler.calls)
    assert all(c.request.params == {"seed": 3} and not c.request.separate for c in sampler.calls)
    report = outcome.report
    assert (outcome.answer, outcome.votes, outcome.truncated) == ("3", {"3": 4}, False)
    assert (report["stopped"], report["launched"], report["finished"]) == ("consensus", 4, 4)
    assert [c["p"] for c in report["checks"]] == [0.75, 0.875, 0.9375, 0.96875]
    assert outcome.decisions == {"stopped_consensus": 1}


async def test_beta_rule_goes_on_at_3_1_and_stops_mid_wave_at_6_1() -> None:
    script = [
        answer("7"),
        answer("5", 1.5),  # wave 1: 7, then 5
        answer("7"),
        answer("7", 1.5),  # wave 2: 3-1 after it, P = 0.8125: go on
        answer("7"),
        answer("7", 1.5),  # wave 3: 4-1 (0.890625), 5-1 (0.9375)
        answer("7"),  # wave 4: 6-1, P = 0.96484375: stop
        Scripted("a much slower sample with the answer is 5 " * 3, 2.0),
    ]
    outcome, sampler = await run(script, k=16)
    report = outcome.report
    assert [c["top"] for c in report["checks"]] == [
        [1, 0],
        [1, 1],
        [2, 1],
        [3, 1],
        [4, 1],
        [5, 1],
        [6, 1],
    ]
    assert [c["p"] for c in report["checks"]] == [
        0.75,
        0.5,
        0.6875,
        0.8125,
        0.890625,
        0.9375,
        0.964844,
    ]
    assert (report["stopped"], report["waves"], report["launched"], report["finished"]) == (
        "consensus",
        4,
        8,
        7,
    )
    assert (outcome.answer, outcome.votes, outcome.winner) == ("7", {"7": 6, "5": 1}, 0)
    last = sampler.batches[-1]
    assert last.cancelled == {0, 1} and last.tokens == [4, 1]  # the slow one was cut at once
    assert report["cancelled"] == 1


async def test_beta_rule_runs_to_k_when_no_answer_leads_enough() -> None:
    outcome, sampler = await run([answer(str(i)) for i in range(6)], k=6, wave=3)
    assert [c.k for c in sampler.calls] == [3, 3]
    assert outcome.report["stopped"] == "k"
    assert (outcome.answer, outcome.winner) == ("0", 0)  # a six-way tie: the first voted
    assert outcome.decisions == {"stopped_k": 1}


async def test_a_last_wave_is_cut_to_k() -> None:
    _, sampler = await run([answer("1"), answer("2"), answer("3")], k=3, wave=2)
    assert [c.k for c in sampler.calls] == [2, 1]


async def test_esc_stops_at_the_first_unanimous_window() -> None:
    script = [answer("4"), answer("9"), Scripted("no idea"), Scripted("no idea")]
    script += [answer("4"), answer("4", 1.3), answer("9"), answer("9")]
    outcome, sampler = await run(script, k=8, stop_rule="esc")
    report = outcome.report
    assert [c.k for c in sampler.calls] == [2, 2, 2]
    assert [c["answers"] for c in report["checks"]] == [["4", "9"], [None, None], ["4", "4"]]
    assert [c["unanimous"] for c in report["checks"]] == [False, False, True]
    assert (report["stopped"], report["launched"]) == ("consensus", 6)
    assert (outcome.answer, outcome.votes) == ("4", {"4": 3, "9": 1})


async def test_esc_answers_with_the_unanimous_window_even_against_a_tied_leader() -> None:
    """ESC's reference code returns the stopping window's answer (Yiwei98/ESC)."""
    script = [answer("2"), answer("2"), answer("6")]
    script += [answer("2"), answer("8"), answer("1")]
    script += [answer("5"), answer("5"), answer("5")]
    outcome, _ = await run(script, k=9, wave=3, stop_rule="esc")
    assert outcome.votes == {"2": 3, "6": 1, "8": 1, "1": 1, "5": 3}
    assert (outcome.answer, outcome.winner, outcome.report["stopped"]) == ("5", 6, "consensus")


async def test_esc_without_a_unanimous_window_takes_the_majority_of_all() -> None:
    script = [answer("2"), answer("6"), answer("2"), answer("8")]
    outcome, _ = await run(script, k=4, stop_rule="esc")
    assert (outcome.answer, outcome.report["stopped"]) == ("2", "k")


@pytest.mark.parametrize("reason", ["tokens", "deadline", "cost"])
async def test_a_budget_cuts_the_waves_and_answers_with_the_best_so_far(
    reason: BudgetName,
) -> None:
    script = [answer("7"), answer("5", 1.5), answer("7"), answer("7", 1.5)]
    script += [Scripted(" ".join(["long"] * 40) + " 9"), Scripted(" ".join(["long"] * 40) + " 9")]
    # wave 1 (8 tokens) and wave 2 (8) finish; wave 3 is cut after 4 more tokens
    outcome, sampler = await run(
        script, budget_tokens=20, budget_reason=reason, k=16, stop_rule="beta"
    )
    report = outcome.report
    assert outcome.truncated
    assert (report["stopped"], report["launched"], report["finished"]) == (
        f"budget_{reason}",
        6,
        4,
    )
    assert (outcome.answer, outcome.votes) == ("7", {"7": 3, "5": 1})
    assert sum(b.emitted for b in sampler.batches) == 20
    assert outcome.decisions == {f"stopped_budget_{reason}": 1}


@pytest.mark.parametrize(
    ("given", "param"),
    [
        ({"k": 0}, "k"),
        ({"k": 65}, "k"),
        ({"k": 4, "wave": 5}, "wave"),
        ({"stop_rule": "esc", "wave": 1}, "wave"),
        ({"stop_rule": "dirichlet"}, "stop_rule"),
        ({"confidence": 0}, "confidence"),
        ({"confidence": 1.5}, "confidence"),
    ],
)
def test_bad_parameters_are_named(given: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        SPEC.parse(given)
    assert caught.value.param == param


def test_defaults() -> None:
    assert SPEC.parse({}) == {"k": 16, "wave": 2, "stop_rule": "beta", "confidence": 0.95}
