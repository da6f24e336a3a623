"""``cascade``: small model first, defer to the large one when it is unsure (arXiv 2404.10136,
2310.03094).

Two deferral rules over k samples of the ``small`` pool:

- ``agreement`` (self-consistency cascade; MoT cascade, Yue et al., arXiv 2310.03094,
  MurongYue/LLM_MoT_cascade@f74d3a9 ``Evaluation/utils.py``; N=3 unanimity of Sarukkai et al.,
  arXiv 2512.02543): accept the small majority iff ``max_count / N_valid >= tau``;
- ``confidence`` (token-level Chow rules, Gupta et al., ICLR'24, arXiv 2404.10136): score the
  winning sample by its tokens' log-probabilities, Chow-Average (``mean``) or Chow-Quantile-alpha
  (``quantile``, alpha=0 is the least confident token); accept iff ``score >= threshold``.

Otherwise the request escalates to the ``large`` pool, which runs the strategy ``escalate_to``::

    samples = sample(small, prompt, k)                    # one request with n=k
    winner, agreement = majority(extract(s) for s in samples)
    signal = agreement if rule == "agreement" else chow(logprobs(winner), method, alpha)
    if signal >= (tau if rule == "agreement" else threshold):
        return winner                                     # the small model is sure enough
    return escalate_to.run(large, prompt)                 # single, majority_vote, ...

Unparseable answers do not vote, so with no answer at all the agreement is 0 and the request
escalates. Neither threshold has a universal value: calibrate it per model pair and task for the
deferral rate you want (§5.1 suggests 20-40%). When a budget runs out during the small phase the
best small answer is returned, marked truncated, without escalating.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from strategies import first_finish, majority_vote, short_m_at_k
from strategies.base import (
    InvalidParameter,
    ParameterSpec,
    StrategyOutcome,
    StrategySpec,
    StrategyTask,
    TokenBound,
    samples_bound,
)
from strategies.selection import (
    finished_in_order,
    majority_outcome,
    sample_to_the_end,
    tally_votes,
)
from strategies.single import SINGLE

# What the large model may run when the small one is deferred (the pass-through or a
# one-pool strategy; never a composite one).
ESCALATIONS: dict[str, StrategySpec] = {
    spec.name: spec for spec in (SINGLE, majority_vote.SPEC, first_finish.SPEC, short_m_at_k.SPEC)
}


def chow_score(logprobs: Sequence[float], method: str, alpha: float) -> float | None:
    """Chow-Average (``mean``) or Chow-Quantile-alpha (``quantile``) of the token log-probs;
    None without tokens. The quantile interpolates linearly between order statistics (numpy's
    default), so alpha=0 is the minimum and alpha=1 the maximum."""
    if not logprobs:
        return None
    if method == "mean":
        return math.fsum(logprobs) / len(logprobs)
    ordered = sorted(logprobs)
    position = alpha * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _large_params(params: dict[str, Any]) -> dict[str, Any]:
    """The escalation strategy's own parameters, validated by its spec."""
    name, large_k = params["escalate_to"], params["large_k"]
    if name == "single":
        if large_k not in (None, 1):
            raise InvalidParameter(
                "large_k", f"large_k must be 1 with escalate_to=single, got {large_k}"
            )
        return {}
    given = {} if large_k is None else {"k": large_k}
    try:
        return ESCALATIONS[name].parse(given)
    except InvalidParameter as exc:
        raise InvalidParameter("large_k", f"escalate_to={name}: {exc}") from None


def _check(params: dict[str, Any]) -> None:
    _large_params(params)


def worst_case(params: dict[str, Any], prompt_tokens: int, max_tokens: int) -> TokenBound:
    """The small model's k samples, then the escalation strategy's own worst case."""
    small = samples_bound(params["k"], prompt_tokens, max_tokens)
    large = ESCALATIONS[params["escalate_to"]].bound(
        _large_params(params), prompt_tokens, max_tokens
    )
    return TokenBound(
        small.prompt_tokens + large.prompt_tokens,
        small.completion_tokens + large.completion_tokens,
    )


async def _single(task: StrategyTask) -> StrategyOutcome:
    """One sample on the task's role: the pass-through, as a step of a composite strategy."""
    book, truncated = await sample_to_the_end(task.sampler, task.request, 1, task.role)
    task.decided()
    return await majority_outcome(book, finished_in_order(book), task.answers, truncated=truncated)


async def _escalate(task: StrategyTask) -> tuple[StrategyOutcome, dict[str, Any]]:
    name = task.params["escalate_to"]
    spec = ESCALATIONS[name]
    params = _large_params(task.params)
    large = StrategyTask(
        request=task.request,
        params=params,
        sampler=task.sampler,
        decided=task.decided,
        role="large",
        answers=task.answers,
    )
    outcome = await (spec.run or _single)(large)
    return outcome, {
        "strategy": name,
        "parameters": params,
        "winner": outcome.winner,
        "answer": outcome.answer,
        "votes": outcome.votes,
        **({"report": outcome.report} if outcome.report else {}),
    }


async def run(task: StrategyTask) -> StrategyOutcome:
    p = task.params
    k, rule = p["k"], p["rule"]
    request = task.request
    if rule == "confidence":  # the Chow rules read the emitted tokens' log-probs
        request = replace(request, params={**request.params, "logprobs": True})
    book, truncated = await sample_to_the_end(task.sampler, request, k, "small")
    voters = finished_in_order(book)
    small = await majority_outcome(book, voters, task.answers, truncated=truncated)
    tally = await tally_votes(voters, task.answers)
    report: dict[str, Any] = {
        "rule": rule,
        "small": {
            "votes": dict(tally.counts),
            "voters": tally.total,
            "winner": small.winner,
            "answer": small.answer,
        },
    }
    if rule == "agreement":
        agreement = tally.agreement()
        report["agreement"] = round(agreement, 4)
        accept = small.answer is not None and agreement >= p["tau"]
    else:
        assert small.winner is not None
        score = chow_score(book.samples[small.winner].logprobs, p["confidence_method"], p["alpha"])
        report["confidence"] = None if score is None else round(score, 4)
        accept = score is not None and score >= p["threshold"]
    if accept or truncated:
        task.decided()
        report["escalated"] = False
        small.report, small.decisions = report, {"accepted": 1}
        return small
    large, report["large"] = await _escalate(task)
    report["escalated"] = True
    large.report, large.decisions = report, {"escalated": 1}
    return large


SPEC = StrategySpec(
    name="cascade",
    summary="k small-model samples; defer to the large model when they disagree or are unsure",
    source="MoT cascade, Yue et al. 2023, arXiv 2310.03094; Chow rules, Gupta et al. 2024, "
    "arXiv 2404.10136",
    parameters=(
        ParameterSpec(
            "k",
            int,
            3,
            "Samples of the small model (one upstream request with n=k)",
            minimum=1,
            maximum=64,
        ),
        ParameterSpec(
            "rule",
            str,
            "agreement",
            "Deferral rule: answer agreement of the k samples, or token confidence",
            choices=("agreement", "confidence"),
        ),
        ParameterSpec(
            "tau",
            float,
            1.0,
            "agreement: accept iff the majority's share of the valid answers is >= tau "
            "(1.0: unanimity, for k=3; about 0.6 for k >= 8)",
            minimum=0,
            maximum=1,
        ),
        ParameterSpec(
            "confidence_method",
            str,
            "mean",
            "confidence: mean token log-prob (Chow-Average) or its alpha-quantile",
            choices=("mean", "quantile"),
        ),
        ParameterSpec(
            "alpha",
            float,
            0.1,
            "confidence_method=quantile: which quantile of the token log-probs (0: the minimum)",
            minimum=0,
            maximum=1,
        ),
        ParameterSpec(
            "threshold",
            float,
            -1.0,
            "confidence: accept iff the score is >= threshold (log-prob; calibrate per task)",
        ),
        ParameterSpec(
            "escalate_to",
            str,
            "single",
            "Strategy the large model runs when the small one is deferred",
            choices=tuple(ESCALATIONS),
        ),
        ParameterSpec(
            "large_k",
            int,
            None,
            "Samples of the escalation strategy (default: its own k)",
            minimum=1,
            maximum=64,
        ),
    ),
    run=run,
    check=_check,
    worst_case=worst_case,
)
