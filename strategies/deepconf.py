"""``deepconf``: Deep Think with Confidence (Fu, Wang, Tian, Zhao, 2025, arXiv 2508.15260;
facebookresearch/deepconf ``helper.py``, ``deepconf-online.py``, ``analysis_offline.py``).

The model's own token probabilities say which reasoning traces to trust:

- **token confidence** at position i: ``C_i = -(1/k) * sum_j log P_i(j)`` over the top-k
  candidates the engine returned (``top_logprobs``, k fixed per request so that thresholds
  compare). High: the model is sure.
- **group confidence**: the mean of ``C_i`` over a sliding window of the last ``window``
  tokens. A trace's score is its **lowest group confidence**, the minimum over its full
  windows; a trace shorter than one window scores the mean of all its tokens (as ``helper.py``
  ``compute_least_grouped`` does).

Online (the paper's Algorithm 2)::

    warm = sample(prompt, warmup)                     # one request with n=warmup, to the end
    s = percentile([score(t) for t in warm], 100 - eta)   # eta 10: DeepConf-low, 90: -high
    V = {}                                            # answer -> summed score of its voters
    for t in warm: if score(t) >= s: V[answer(t)] += score(t)
    while launched < k:                               # at least one wave after the warm-up
        for t in sample(prompt, min(wave, k - launched)):  # one request per trace, same worker
            at every token: if the window is full and its group confidence < s:
                abort t                               # at once: it does not vote
            when t finishes: if score(t) >= s: V[answer(t)] += score(t)
                             stop if max(V) / sum(V) >= consensus
    return argmax V                                   # ties: the answer voted for first

The percentile is numpy's default (linear between order statistics), as the reference's
``np.percentile``. A trace is killed only once its window is full (the authors' vLLM patch);
one that finishes under the threshold without a full window below it (a short trace) does not
vote either (``deepconf-online.py`` filters the final traces by their score the same way).

Offline (``mode: offline``, the paper's offline DeepConf): all k traces run to the end, then
``s`` = the (100 - eta)th percentile of the scores of those with an answer, and the traces
scoring >= s vote, weighted by their score (``analysis_offline.py``).

Serving: the warm-up is one ``n=warmup`` request (one prefill); every later trace is its own
request (``SampleRequest.separate``) so that aborting one stops its generation on the engine,
and all of them stay on the warm-up's worker (``sticky_key``), whose prefix cache holds the
prompt. Every token of every trace, killed ones included, is billed by the gateway.

Without top logprobs from the engine there is no confidence: the warm-up's plain majority is
the answer and the report says ``stopped: no_logprobs``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

from strategies.answers import VoteTally
from strategies.base import (
    InvalidParameter,
    ParameterSpec,
    StrategyOutcome,
    StrategySpec,
    StrategyTask,
)
from strategies.sampling import (
    BudgetExhausted,
    SampleBatch,
    SampleBook,
    SampleState,
)
from strategies.selection import vote_of

STICKY_KEY = "deepconf"  # the warm-up's worker keeps every later trace (its prefix cache)


# ---------------------------------------------------------------------------------------------
# Confidence
# ---------------------------------------------------------------------------------------------


def token_confidence(top_logprobs: Mapping[str, float]) -> float | None:
    """``C_i``: minus the mean log-probability of the top candidates; None without any."""
    if not top_logprobs:
        return None
    return -math.fsum(top_logprobs.values()) / len(top_logprobs)


class GroupConfidence:
    """The sliding-window group confidence of one trace, fed token by token."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._recent: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self._since_exact = 0
        self.tokens = 0  # tokens with a confidence
        self.lowest: float | None = None  # minimum over the full windows so far

    def add(self, confidence: float) -> float | None:
        """Add a token's confidence; the current window's group confidence once the window is
        full, else None."""
        if len(self._recent) == self.window:
            self._sum -= self._recent[0]
        self._recent.append(confidence)
        self._sum += confidence
        self.tokens += 1
        self._since_exact += 1
        if self._since_exact >= self.window:  # a running sum drifts: re-add it once a window
            self._sum = math.fsum(self._recent)
            self._since_exact = 0
        if len(self._recent) < self.window:
            return None
        group = self._sum / self.window
        if self.lowest is None or group < self.lowest:
            self.lowest = group
        return group

    @property
    def score(self) -> float | None:
        """The trace's lowest group confidence; the mean of all its tokens if it never filled
        a window; None without any confidence."""
        if self.lowest is not None:
            return self.lowest
        if not self._recent:
            return None
        return math.fsum(self._recent) / len(self._recent)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics (numpy's
    default, as the reference's ``np.percentile``)."""
    ordered = sorted(values)
    position = q / 100 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# ---------------------------------------------------------------------------------------------
# Traces and the weighted vote
# ---------------------------------------------------------------------------------------------


@dataclass
class Trace:
    """One reasoning trace: what it produced, its confidence, and what became of it."""

    index: int  # in launch order over every batch: the order of ``ttc.sample_tokens``
    phase: str  # "warmup", "online" or "offline"
    sample: SampleState
    group: GroupConfidence
    killed_at: int | None = None  # the token whose window fell below the threshold
    answer: str | None = None
    voted: bool = False

    def report(self) -> dict[str, Any]:
        score = self.group.score
        return {
            "trace": self.index,
            "phase": self.phase,
            "tokens": self.sample.tokens,
            "confidence": None if score is None else round(score, 4),
            "finish_reason": self.sample.finish_reason or "abort",
            "killed_at": self.killed_at,
            "answer": self.answer,
            "voted": self.voted,
        }


@dataclass
class WeightedVotes:
    """Answers weighted by their voters' confidence; ties go to the answer voted for first."""

    weights: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    first_voter: dict[str, Trace] = field(default_factory=dict)

    def add(self, trace: Trace, answer: str, weight: float) -> None:
        self.weights[answer] = self.weights.get(answer, 0.0) + weight
        self.counts[answer] = self.counts.get(answer, 0) + 1
        self.first_voter.setdefault(answer, trace)

    def leader(self) -> str | None:
        return max(self.weights, key=self.weights.__getitem__, default=None)

    def consensus(self) -> float:
        """beta = V(leader) / sum V; 0 before any vote."""
        total = math.fsum(self.weights.values())
        leader = self.leader()
        return self.weights[leader] / total if leader is not None and total > 0 else 0.0


class DeepConf:
    """One request's traces, threshold and votes."""

    def __init__(self, task: StrategyTask) -> None:
        p = task.params
        self.task = task
        self.window: int = p["window"]
        self.eta: float = p["eta"]
        self.consensus: float = p["consensus"]
        self.request = replace(
            task.request,
            params={**task.request.params, "logprobs": True, "top_logprobs": p["top_logprobs"]},
        )
        self.traces: list[Trace] = []
        self.finished: list[Trace] = []  # in finish order
        self.threshold: float | None = None
        self.votes = WeightedVotes()

    @property
    def launched(self) -> int:
        return len(self.traces)

    async def sample(self, phase: str, n: int, *, separate: bool) -> None:
        """Start ``n`` traces and read them to their ends; from the online phase on, kill a
        trace the moment its window falls below the threshold, and vote as each finishes.
        Returns early (the rest of the batch cancelled) once consensus is reached."""
        online = phase != "offline"  # the warm-up's worker keeps the later traces
        request = replace(
            self.request, separate=separate, sticky_key=STICKY_KEY if online else None
        )
        batch = await self.task.sampler.start(request, n, self.task.role)
        book = SampleBook(n)
        traces = [
            Trace(self.launched + i, phase, book.samples[i], GroupConfidence(self.window))
            for i in range(n)
        ]
        self.traces += traces
        killing = phase == "online"
        async with aclosing(batch.events()) as events:
            async for delta in events:
                trace = traces[delta.sample]
                before = trace.sample.tokens
                ended = book.record(delta)
                for j, top in enumerate(delta.top_logprobs):
                    confidence = token_confidence(top)
                    if confidence is None:
                        continue
                    group = trace.group.add(confidence)
                    if (
                        killing
                        and ended is None
                        and group is not None
                        and self.threshold is not None
                        and group < self.threshold
                    ):
                        trace.killed_at = before + j + 1
                        await batch.cancel([delta.sample])
                        break
                if ended is None:
                    continue
                await self.finish(trace)
                if killing and self.vote(trace) and self.settled():
                    await self.stop(batch)
                    return

    async def finish(self, trace: Trace) -> None:
        self.finished.append(trace)
        trace.answer = await vote_of(trace.sample, self.task.answers)

    def vote(self, trace: Trace) -> bool:
        """Count the trace's answer if it has one and its score reaches the threshold."""
        score = trace.group.score
        if trace.answer is None or score is None or self.threshold is None:
            return False
        if score < self.threshold:
            return False
        trace.voted = True
        self.votes.add(trace, trace.answer, score)
        return True

    def settled(self) -> bool:
        return self.votes.consensus() >= self.consensus

    async def stop(self, batch: SampleBatch) -> None:
        self.task.decided()
        await batch.cancel()

    def set_threshold(self, traces: Iterable[Trace]) -> None:
        """The (100 - eta)th percentile of the traces' scores (a failed trace has none)."""
        scores = [
            score
            for t in traces
            if t.sample.finish_reason != "error" and (score := t.group.score) is not None
        ]
        self.threshold = percentile(scores, 100 - self.eta) if scores else None

    def outcome(self, stopped: str, truncated: bool) -> StrategyOutcome:
        winner, answer = self._winner()
        killed = [t for t in self.traces if t.killed_at is not None]
        report: dict[str, Any] = {
            "mode": self.task.params["mode"],
            "stopped": stopped,
            "threshold": None if self.threshold is None else round(self.threshold, 4),
            "consensus": round(self.votes.consensus(), 4),
            "launched": self.launched,
            "finished": len(self.finished),
            "killed": len(killed),
            # stopped because the answer was decided or a budget ran out
            "cancelled": self.launched - len(self.finished) - len(killed),
            "voted": sum(t.voted for t in self.traces),
            "weights": {a: round(w, 4) for a, w in self.votes.weights.items()},
            "traces": [t.report() for t in self.traces],
        }
        decisions = {f"stopped_{stopped}": 1}
        if killed:
            decisions["killed"] = len(killed)
        finish = winner.sample.finish_reason if winner is not None else None
        return StrategyOutcome(
            content=winner.sample.text if winner is not None else "",
            reasoning=winner.sample.reasoning if winner is not None else "",
            finish_reason=finish if finish in ("stop", "length") else "length",
            winner=winner.index if winner is not None else None,
            answer=answer,
            votes=dict(self.votes.counts),
            truncated=truncated,
            report=report,
            decisions=decisions,
        )

    def _winner(self) -> tuple[Trace | None, str | None]:
        """The weighted vote's first voter for the leading answer; without any vote, the plain
        majority of the finished traces, else the first finished, else the longest trace."""
        leader = self.votes.leader()
        if leader is not None:
            return self.votes.first_voter[leader], leader
        plain: VoteTally[int] = VoteTally()
        for trace in self.finished:
            plain.add(trace.index, trace.answer)
        fallback = plain.leader()
        if fallback is not None:
            return self.traces[plain.winner_sample(fallback)], fallback
        if self.finished:
            return self.finished[0], None
        if self.traces:
            return max(self.traces, key=lambda t: t.sample.tokens), None
        return None, None


async def run(task: StrategyTask) -> StrategyOutcome:
    p = task.params
    run = DeepConf(task)
    stopped, truncated = "k", False
    try:
        if p["mode"] == "offline":
            await run.sample("offline", p["k"], separate=False)
        else:
            stopped = await _online(run, p)
    except BudgetExhausted as exc:
        stopped, truncated = f"budget_{exc.reason}", True
    if p["mode"] == "offline":  # filter and weight what finished
        run.set_threshold(t for t in run.finished if t.answer is not None)
        for trace in run.finished:
            run.vote(trace)
    task.decided()
    return run.outcome(stopped, truncated)


async def _online(run: DeepConf, p: dict[str, Any]) -> str:
    """The online phase; returns why it stopped."""
    await run.sample("warmup", p["warmup"], separate=False)
    run.set_threshold(run.finished)
    if run.threshold is None:
        return "no_logprobs"
    for trace in run.finished:
        run.vote(trace)
    # Consensus is checked as traces finish after the warm-up (the paper's Algorithm 2), not
    # on the warm-up alone: with eta 10 about one warm-up trace in ten votes, and one voter is
    # always unanimous.
    while run.launched < p["k"]:
        await run.sample("online", min(p["wave"], p["k"] - run.launched), separate=True)
        if run.settled():
            return "consensus"
    return "k"


def _check(params: dict[str, Any]) -> None:
    if params["mode"] == "online" and params["warmup"] > params["k"]:
        raise InvalidParameter(
            "warmup", f"warmup must be <= k, got warmup={params['warmup']} and k={params['k']}"
        )
    if not 0 < params["eta"] < 100:
        raise InvalidParameter("eta", f"eta must be > 0 and < 100, got {params['eta']}")
    if not params["consensus"] > 0:
        raise InvalidParameter("consensus", f"consensus must be > 0, got {params['consensus']}")


SPEC = StrategySpec(
    name="deepconf",
    summary="warm-up traces set a confidence threshold; later traces are aborted the moment "
    "their sliding-window confidence falls below it; confidence-weighted vote, stopping at "
    "consensus",
    source="DeepConf, Fu et al. 2025, arXiv 2508.15260",
    parameters=(
        ParameterSpec("k", int, 32, "Traces at most, the warm-up's included (the budget)", 1, 64),
        ParameterSpec(
            "warmup",
            int,
            16,
            "Warm-up traces, run to the end in one request (n=warmup); they set the threshold",
            1,
            64,
        ),
        ParameterSpec(
            "eta",
            float,
            10.0,
            "Keep the most confident eta% of traces: threshold = the (100 - eta)th percentile "
            "of the warm-up traces' lowest group confidence (10: DeepConf-low, 90: -high)",
            0,
            100,
        ),
        ParameterSpec(
            "window",
            int,
            64,
            "Tokens in the sliding window of the group confidence (the paper's 2048 is for "
            "traces of ~10k tokens; a trace shorter than the window is never killed mid-way)",
            1,
            32768,
        ),
        ParameterSpec(
            "consensus",
            float,
            0.95,
            "Stop once the leading answer holds this share of the confidence-weighted votes",
            0,
            1,
        ),
        ParameterSpec(
            "wave",
            int,
            4,
            "Traces started together after the warm-up, each its own request on the warm-up's "
            "worker",
            1,
            64,
        ),
        ParameterSpec(
            "top_logprobs",
            int,
            20,
            "Candidates per token in the token confidence (the reference asks vLLM for 20)",
            1,
            20,
        ),
        ParameterSpec(
            "mode",
            str,
            "online",
            "online: warm-up, threshold, early kills and stop; offline: all k traces to the "
            "end, then filter and weight",
            choices=("online", "offline"),
        ),
    ),
    run=run,
    check=_check,
)
