"""``adaptive_consistency``: sample until the answer is known.

Adaptive-Consistency (Aggarwal, Madaan, Yang, Mausam, EMNLP 2023, arXiv 2305.11860;
Pranjal2041/AdaptiveConsistency ``stopping_criterias.py``) draws samples a few at a time and
stops as soon as a stopping criterion on the answer counts says the leader is the mode::

    votes = {}
    while launched < k:
        for s in finished_in_order(sample(prompt, min(wave, k - launched))):  # one request
            votes[answer(s)] += 1                     # unparseable answers do not vote
            if stop_rule == "beta" and P(p1 > p2 | votes) >= confidence:
                cancel(the rest of the wave); return leader(votes)
        if stop_rule == "esc" and the wave's `wave` samples all gave one answer:
            return that answer                        # ESC, arXiv 2401.10480
    return leader(votes)                              # ties: the answer voted for first

**Beta criterion** (the paper's ``BetaStoppingCriteria``): with v1, v2 the counts of the two
most frequent answers (v2 = 0 with one answer), the leader's share p1 of those two has the
posterior Beta(v1 + 1, v2 + 1) under a uniform prior, and::

    P(p1 > p2) = P(p1 > 1/2) = int_{1/2}^{1} x^v1 (1-x)^v2 dx / int_0^1 x^v1 (1-x)^v2 dx

The reference integrates with ``scipy.integrate.quad``; here both integrals are Gauss-Legendre
quadratures with ``_NODES`` nodes on [0, 1/2] and on [1/2, 1], which are exact (up to rounding)
for a polynomial integrand of degree up to 2 * _NODES - 1 = 127. The integrand has degree
v1 + v2 <= k <= 64, so the criterion is computed exactly; no scipy.

**ESC** (Early-Stopping Self-Consistency, Li et al., ICLR 2024, arXiv 2401.10480; Yiwei98/ESC
``early_stop_gsm8k.py``): samples come in windows of ``wave``; sampling stops at the first
window whose answers are all the same (zero entropy), and that answer is returned; without
such a window, the majority of all samples. A window needs all ``wave`` samples with an
answer (the reference counts "no answer" as an answer; here it never votes), and a last window
cut short by ``k`` does not count.

Waves are sequential, so latency grows while samples fall; every wave goes to the worker of the
first (``sticky_key``), whose prefix cache holds the prompt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from functools import cache
from typing import Any

from strategies.answers import VoteTally
from strategies.base import (
    InvalidParameter,
    ParameterSpec,
    StrategyOutcome,
    StrategySpec,
    StrategyTask,
)
from strategies.sampling import BudgetExhausted, SampleState, finish_order
from strategies.selection import vote_of

STICKY_KEY = "adaptive_consistency"
_NODES = 64


@cache
def _gauss_legendre(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodes and weights of the n-point Gauss-Legendre rule on [-1, 1]: the roots of the
    Legendre polynomial P_n, found by Newton's method from Tricomi's estimate."""
    nodes, weights = [], []
    for i in range(1, n + 1):
        x = math.cos(math.pi * (i - 0.25) / (n + 0.5))
        for _ in range(100):
            p_prev, p = 1.0, x  # P_0, P_1; then the three-term recurrence up to P_n
            for j in range(2, n + 1):
                p_prev, p = p, ((2 * j - 1) * x * p - (j - 1) * p_prev) / j
            slope = n * (x * p - p_prev) / (x * x - 1)  # P_n'(x)
            step = p / slope
            x -= step
            if abs(step) < 1e-16:
                break
        nodes.append(x)
        weights.append(2 / ((1 - x * x) * slope * slope))
    return tuple(nodes), tuple(weights)


def _integral(v1: int, v2: int, low: float, high: float) -> float:
    """``int_low^high x^v1 (1-x)^v2 dx`` by Gauss-Legendre quadrature."""
    nodes, weights = _gauss_legendre(_NODES)
    half, middle = (high - low) / 2, (high + low) / 2
    return half * math.fsum(
        w * (middle + half * t) ** v1 * (1 - (middle + half * t)) ** v2
        for t, w in zip(nodes, weights, strict=True)
    )


def beta_probability(v1: int, v2: int) -> float:
    """P(p1 > p2) under Beta(v1 + 1, v2 + 1): the probability that the answer counted v1 times
    is truly more frequent than the one counted v2 times."""
    if v1 + v2 >= 2 * _NODES:
        raise ValueError(f"counts {v1}+{v2} exceed what {_NODES}-point quadrature integrates")
    upper = _integral(v1, v2, 0.5, 1.0)
    return upper / (_integral(v1, v2, 0.0, 0.5) + upper)


def top_two(counts: Mapping[str, int]) -> tuple[int, int]:
    """The two largest vote counts (the second 0 when there is one answer)."""
    first, second = 0, 0
    for count in counts.values():
        if count > first:
            first, second = count, first
        elif count > second:
            second = count
    return first, second


def esc_unanimous(window: list[str | None], wave: int) -> bool:
    """ESC's stop: a full window of ``wave`` samples that all gave the same answer."""
    return len(window) == wave and window[0] is not None and len(set(window)) == 1


async def run(task: StrategyTask) -> StrategyOutcome:
    p = task.params
    k, wave, rule = p["k"], p["wave"], p["stop_rule"]
    request = replace(task.request, sticky_key=STICKY_KEY)
    tally: VoteTally[int] = VoteTally()  # sample index (launch order over all waves) -> answer
    samples: list[SampleState] = []  # in launch order, as ``ttc.sample_tokens``
    finished: list[int] = []  # in finish order
    checks: list[dict[str, Any]] = []
    stopped: str | None = None
    esc_answer: str | None = None
    waves = 0
    while stopped is None:
        if len(samples) == k:
            stopped = "k"
            break
        offset, window = len(samples), []
        waves += 1
        try:
            size = min(wave, k - offset)
            async with finish_order(task.sampler, request, size, task.role) as batch:
                samples += batch.book.samples
                async for sample in batch:
                    answer = await vote_of(sample, task.answers)
                    tally.add(offset + sample.index, answer)
                    finished.append(offset + sample.index)
                    window.append(answer)
                    if rule == "beta" and tally.valid:
                        v1, v2 = top_two(tally.counts)
                        probability = beta_probability(v1, v2)
                        checks.append(
                            {"voters": tally.valid, "top": [v1, v2], "p": round(probability, 6)}
                        )
                        if probability >= p["confidence"]:
                            stopped = "consensus"
                            task.decided()
                            await batch.stop()
                            break
        except BudgetExhausted as exc:  # the deadline passed before the wave's worker answered
            stopped = f"budget_{exc.reason}"
            break
        if batch.budget is not None:
            stopped = f"budget_{batch.budget}"
        elif rule == "esc":
            unanimous = esc_unanimous(window, wave)
            checks.append({"wave": waves, "answers": window, "unanimous": unanimous})
            if unanimous:
                stopped, esc_answer = "consensus", window[0]
                task.decided()
    task.decided()
    answer = esc_answer or tally.leader()
    if answer is not None:
        chosen = tally.winner_sample(answer)
    elif finished:  # nothing parsed: the first finished text
        chosen = finished[0]
    else:
        chosen = max(range(len(samples)), key=lambda i: samples[i].tokens)
    winner = samples[chosen]
    return StrategyOutcome(
        content=winner.text,
        reasoning=winner.reasoning,
        finish_reason=winner.finish_reason
        if winner.finish_reason in ("stop", "length")
        else "length",
        winner=chosen,
        answer=answer,
        votes=dict(tally.counts),
        truncated=stopped.startswith("budget_"),
        report={
            "stop_rule": rule,
            "stopped": stopped,
            "waves": waves,
            "launched": len(samples),
            "finished": len(finished),
            "cancelled": len(samples) - len(finished),  # by the stop or a budget
            "agreement": round(tally.agreement(), 4),
            "voters": tally.valid,
            "checks": checks,
        },
        decisions={f"stopped_{stopped}": 1},
    )


def _check(params: dict[str, Any]) -> None:
    if params["wave"] > params["k"]:
        raise InvalidParameter(
            "wave", f"wave must be <= k, got wave={params['wave']} and k={params['k']}"
        )
    if params["stop_rule"] == "esc" and params["wave"] < 2:
        raise InvalidParameter(
            "wave",
            "wave must be >= 2 with stop_rule=esc (a window of one sample is always unanimous)",
        )
    if not params["confidence"] > 0:
        raise InvalidParameter("confidence", f"confidence must be > 0, got {params['confidence']}")


SPEC = StrategySpec(
    name="adaptive_consistency",
    summary="samples in waves on one worker until the answer is known: the Beta criterion "
    "P(p1 > p2) >= confidence, or a unanimous wave (ESC); at most k",
    source="Adaptive-Consistency, Aggarwal et al. 2023, arXiv 2305.11860; ESC, Li et al. 2024, "
    "arXiv 2401.10480",
    parameters=(
        ParameterSpec("k", int, 16, "Samples at most (the budget)", 1, 64),
        ParameterSpec(
            "wave",
            int,
            2,
            "Samples started together (one request, on the first wave's worker); ESC's window",
            1,
            64,
        ),
        ParameterSpec(
            "stop_rule",
            str,
            "beta",
            "beta: stop once P(leader more frequent than the runner-up) >= confidence, checked "
            "after every finished sample; esc: stop at the first unanimous wave",
            choices=("beta", "esc"),
        ),
        ParameterSpec(
            "confidence",
            float,
            0.95,
            "stop_rule=beta: the Beta criterion's threshold C",
            0,
            1,
        ),
    ),
    run=run,
    check=_check,
)
