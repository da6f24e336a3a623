"""``ttc-gateway bench stopping``: the adaptive stopping rules, simulated, against ``majority_vote``
at the same k. No model and no engine: the real strategy code runs on a simulated sampler.

Each simulated problem has one correct answer, drawn with the *leader probability* p (spread
over ``--leader`` values, 0.3 to 0.9 by default), and ``--distractors`` wrong answers sharing
1 - p equally (so the correct one is always the most likely). Its k traces are drawn up front,
so every rule reads the same traces in the same order (paired): trace i has an answer, a length
(``--min-tokens`` to ``--max-tokens``), a speed, and a confidence level, normal with standard
deviation 1 around ``--confidence`` for a correct trace and ``gap`` lower for a wrong one, where
``gap`` is each of ``--gap`` (0: confidence carries no signal). Every token reports top-5
log-probabilities whose mean is minus the trace's level plus per-token noise
(``--token-noise``), which is what DeepConf's token confidence reads.

Per signal level and rule: samples and tokens per problem and their ratio to majority_vote's,
agreement with the answer a full-k majority vote gives (majority_vote agrees by construction:
it stops only once the vote cannot change), and accuracy. Targets (the issue's):
adaptive_consistency agrees with the full majority on >= 99% of problems using <= 40% of its
samples; deepconf uses <= 50% of majority_vote's tokens at equal or better accuracy where
confidence carries signal (gap > 0), reported as measured where it does not (gap 0).
"""

from __future__ import annotations

import asyncio
import heapq
import platform
import random
import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.bench.common import (
    BenchError,
    Verdict,
    command_line,
    cpu_model,
    git_revision,
    progress,
    run_bench,
    version,
)
from strategies import get_strategy
from strategies.answers import VoteTally, answer_key
from strategies.base import StrategyTask
from strategies.sampling import RoleName, SampleDelta, SampleRequest

CORRECT = "42"
DISTRACTORS = ("17", "23", "31", "56", "64", "75", "88", "99")
TOP_ALTERNATIVES = 5
CHOSEN_LOGPROB = -0.05

TARGET_AC_AGREEMENT = 0.99
TARGET_AC_SAMPLES = 0.40
TARGET_DC_TOKENS = 0.50


@dataclass(frozen=True)
class Trace:
    answer: str
    tokens: int
    token_s: float  # virtual seconds per token: the order traces finish in
    confidence: float  # the trace's level; each token's confidence is this plus noise

    @property
    def finishes_at(self) -> float:
        """Virtual time of its last token (``SimulatedBatch`` emits in this order)."""
        return self.tokens * self.token_s


@dataclass(frozen=True)
class Problem:
    leader_p: float
    gap: float
    traces: tuple[Trace, ...]
    seed: int

    def full_majority(self) -> str:
        """The answer all k traces vote for: ``majority_vote``'s own tally, fed in finish order
        (ties: the answer whose first voter finishes first)."""
        tally: VoteTally[int] = VoteTally()
        for i in sorted(range(len(self.traces)), key=lambda i: self.traces[i].finishes_at):
            tally.add(i, self.traces[i].answer)
        leader = tally.leader()
        assert leader is not None  # every simulated trace has an answer
        return leader


@dataclass(frozen=True)
class Workload:
    k: int
    leaders: tuple[float, ...]
    gaps: tuple[float, ...]
    distractors: int
    problems: int  # per (leader, gap)
    min_tokens: int
    max_tokens: int
    confidence: float
    token_noise: float
    seed: int


def draw_problem(
    rng: random.Random, leader_p: float, gap: float, w: Workload, seed: int
) -> Problem:
    wrong = DISTRACTORS[: w.distractors]
    traces = []
    for _ in range(w.k):
        correct = rng.random() < leader_p
        answer = CORRECT if correct else rng.choice(wrong)
        level = rng.gauss(w.confidence - (0.0 if correct else gap), 1.0)
        traces.append(
            Trace(
                answer=answer,
                tokens=rng.randint(w.min_tokens, w.max_tokens),
                token_s=rng.uniform(0.5, 1.5),
                confidence=max(level, 0.2),
            )
        )
    return Problem(leader_p, gap, tuple(traces), seed)


def draw_problems(w: Workload) -> list[Problem]:
    rng = random.Random(w.seed)
    problems = []
    for gap in w.gaps:
        for leader in w.leaders:
            for _ in range(w.problems):
                problems.append(draw_problem(rng, leader, gap, w, rng.getrandbits(32)))
    return problems


def token_top_logprobs(confidence: float) -> dict[str, float]:
    """Top-5 log-probabilities whose mean is ``-confidence`` (DeepConf's token confidence is
    minus the mean log-probability of the top tokens), the chosen token first."""
    rest = -(TOP_ALTERNATIVES * confidence + CHOSEN_LOGPROB) / (TOP_ALTERNATIVES - 1)
    return {"tok": CHOSEN_LOGPROB, **{f"alt{i}": rest for i in range(1, TOP_ALTERNATIVES)}}


class SimulatedBatch:
    """k of a problem's traces, emitted one token at a time in virtual-time order."""

    def __init__(self, traces: Sequence[Trace], rng: random.Random, noise: float) -> None:
        self.k = len(traces)
        self.traces = traces
        self.rng = rng
        self.noise = noise
        self.cancelled: set[int] = set()
        self.emitted = [0] * self.k

    async def events(self) -> AsyncGenerator[SampleDelta, None]:
        queue = [(t.token_s, i, 0) for i, t in enumerate(self.traces)]
        heapq.heapify(queue)
        steps = 0
        while queue:
            at, i, n = heapq.heappop(queue)
            if i in self.cancelled:
                continue
            trace = self.traces[i]
            last = n == trace.tokens - 1
            level = max(trace.confidence + self.rng.gauss(0.0, self.noise), 0.05)
            self.emitted[i] += 1
            yield SampleDelta(
                i,
                f"The answer is {trace.answer}." if last else "step ",
                1,
                logprobs=(CHOSEN_LOGPROB,),
                top_logprobs=(token_top_logprobs(level),),
                finish_reason="stop" if last else None,
                eos=True if last else None,
            )
            if not last:
                heapq.heappush(queue, (at + trace.token_s, i, n + 1))
            steps += 1
            if steps % 64 == 0:
                await asyncio.sleep(0)  # let a strategy's other tasks run

    async def cancel(self, samples: Iterable[int] | None = None) -> None:
        self.cancelled |= set(range(self.k)) if samples is None else set(samples)


@dataclass
class SimulatedSampler:
    """Hands out a problem's pre-drawn traces in order, batch after batch."""

    problem: Problem
    noise: float
    rng: random.Random
    batches: list[SimulatedBatch] = field(default_factory=list)
    launched: int = 0

    async def start(
        self, request: SampleRequest, k: int, role: RoleName | None = None
    ) -> SimulatedBatch:
        if self.launched + k > len(self.problem.traces):
            raise RuntimeError(f"the strategy asked for more than k={len(self.problem.traces)}")
        traces = self.problem.traces[self.launched : self.launched + k]
        self.launched += k
        batch = SimulatedBatch(traces, self.rng, self.noise)
        self.batches.append(batch)
        return batch

    async def render_chat(
        self, messages: list[dict[str, Any]], role: RoleName | None = None
    ) -> str:
        raise NotImplementedError("the simulated strategies sample chat messages")

    @property
    def tokens(self) -> int:
        return sum(sum(b.emitted) for b in self.batches)


@dataclass(frozen=True)
class Rule:
    label: str
    strategy: str
    params: dict[str, Any]


@dataclass
class Tally:
    problems: int = 0
    samples: int = 0
    tokens: int = 0
    agree: int = 0
    correct: int = 0

    def add(self, samples: int, tokens: int, agree: bool, correct: bool) -> None:
        self.problems += 1
        self.samples += samples
        self.tokens += tokens
        self.agree += agree
        self.correct += correct

    def per_problem(self, total: int) -> float:
        return total / self.problems if self.problems else 0.0


def default_rules(k: int, warmup: int, window: int) -> list[Rule]:
    deepconf = {"k": k, "warmup": warmup, "window": window}
    return [
        Rule("majority_vote", "majority_vote", {"k": k}),
        Rule("adaptive_consistency (beta)", "adaptive_consistency", {"k": k}),
        Rule(
            "adaptive_consistency (esc, wave 2)",
            "adaptive_consistency",
            {"k": k, "stop_rule": "esc"},
        ),
        Rule(
            "adaptive_consistency (esc, wave 8)",
            "adaptive_consistency",
            {"k": k, "stop_rule": "esc", "wave": 8},
        ),
        Rule("deepconf low (eta 10)", "deepconf", {**deepconf, "eta": 10}),
        Rule("deepconf high (eta 90)", "deepconf", {**deepconf, "eta": 90}),
        Rule("deepconf offline (eta 10)", "deepconf", {**deepconf, "eta": 10, "mode": "offline"}),
    ]


async def run_rule(rule: Rule, problem: Problem, noise: float) -> tuple[int, int, str | None]:
    """(samples launched, tokens generated, answer key) of one rule on one problem."""
    spec = get_strategy(rule.strategy)
    if spec.run is None:
        raise BenchError(f"{rule.strategy} is the pass-through: nothing to simulate")
    sampler = SimulatedSampler(problem, noise, random.Random(problem.seed))
    task = StrategyTask(
        request=SampleRequest(
            messages=[{"role": "user", "content": "simulated"}],
            params={"max_tokens": 4096, "temperature": 0.8},
        ),
        params=spec.parse(rule.params),
        sampler=sampler,
        decided=lambda: None,
    )
    outcome = await spec.run(task)
    return sampler.launched, sampler.tokens, answer_key(outcome.content)


async def simulate(
    rules: Sequence[Rule], problems: Sequence[Problem], noise: float
) -> tuple[dict[tuple[float, str], Tally], dict[tuple[float, str], Tally]]:
    """Every rule on every problem: a tally per (gap, rule label), and one per (leader
    probability, rule label) over every gap."""
    tallies: dict[tuple[float, str], Tally] = {}
    by_leader: dict[tuple[float, str], Tally] = {}
    for n, problem in enumerate(problems):
        truth = problem.full_majority()
        for rule in rules:
            samples, tokens, answer = await run_rule(rule, problem, noise)
            for key, table in (
                ((problem.gap, rule.label), tallies),
                ((problem.leader_p, rule.label), by_leader),
            ):
                table.setdefault(key, Tally()).add(
                    samples, tokens, answer == truth, answer == CORRECT
                )
        if (n + 1) % 200 == 0:
            progress(f"  {n + 1}/{len(problems)} problems")
    return tallies, by_leader


def render_by_leader(
    rules: Sequence[Rule], by_leader: dict[tuple[float, str], Tally], leaders: Sequence[float]
) -> list[str]:
    """Samples (vs majority_vote) and agreement with the full-k majority per leader
    probability, every gap together: where each rule saves and where it cannot."""
    lines = [
        "",
        "by leader probability (every gap): samples vs majority_vote / agreement with the "
        "full-k majority",
        "| rule | " + " | ".join(f"p={p:g}" for p in leaders) + " |",
        "|---|" + "---:|" * len(leaders),
    ]
    for rule in rules[1:]:
        cells = []
        for p in leaders:
            t, base = by_leader[(p, rule.label)], by_leader[(p, rules[0].label)]
            cells.append(f"{t.samples / base.samples:.2f}x / {t.agree / t.problems:.0%}")
        lines.append(f"| {rule.label} | " + " | ".join(cells) + " |")
    return lines


def ratio(value: float, base: float) -> float | None:
    return value / base if base else None


def render(
    rules: Sequence[Rule], tallies: dict[tuple[float, str], Tally], gaps: Sequence[float]
) -> list[str]:
    lines = []
    for gap in gaps:
        base = tallies[(gap, rules[0].label)]
        signal = "no signal" if gap == 0 else f"wrong traces {gap:g} sd less confident"
        lines += [
            "",
            f"confidence gap {gap:g} ({signal})",
            "| rule | samples/problem | samples vs MV | tokens/problem | tokens vs MV | "
            "agrees with full-k majority | accuracy |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for rule in rules:
            t = tallies[(gap, rule.label)]
            samples_ratio = ratio(t.samples, base.samples) or 0.0
            tokens_ratio = ratio(t.tokens, base.tokens) or 0.0
            lines.append(
                f"| {rule.label} | {t.per_problem(t.samples):.2f} | {samples_ratio:.2f}x | "
                f"{t.per_problem(t.tokens):,.0f} | {tokens_ratio:.2f}x | "
                f"{t.agree / t.problems:.1%} | {t.correct / t.problems:.1%} |"
            )
    return lines


def verdicts(
    rules: Sequence[Rule], tallies: dict[tuple[float, str], Tally], gaps: Sequence[float]
) -> list[Verdict]:
    out = []

    def summed(label: str, which: Iterable[float]) -> Tally:
        total = Tally()
        for gap in which:
            t = tallies[(gap, label)]
            total.problems += t.problems
            total.samples += t.samples
            total.tokens += t.tokens
            total.agree += t.agree
            total.correct += t.correct
        return total

    base_label = rules[0].label
    base = summed(base_label, gaps)
    for rule in rules:
        if rule.strategy != "adaptive_consistency" or rule.params.get("stop_rule") == "esc":
            continue  # the target is the Beta rule's (the default); ESC is reported
        t = summed(rule.label, gaps)
        agreement, samples = t.agree / t.problems, t.samples / base.samples
        out.append(
            Verdict(
                f"{rule.label}: >= {TARGET_AC_AGREEMENT:.0%} agreement at <= "
                f"{TARGET_AC_SAMPLES:.0%} of majority_vote's samples (every gap)",
                agreement >= TARGET_AC_AGREEMENT and samples <= TARGET_AC_SAMPLES,
                f"{agreement:.2%} agreement, {samples:.1%} of the samples",
            )
        )
    for gap in gaps:
        mv = tallies[(gap, base_label)]
        for rule in rules:
            if rule.strategy != "deepconf" or rule.params.get("mode") == "offline":
                continue
            t = tallies[(gap, rule.label)]
            tokens = t.tokens / mv.tokens
            accuracy, mv_accuracy = t.correct / t.problems, mv.correct / mv.problems
            ok = tokens <= TARGET_DC_TOKENS and accuracy >= mv_accuracy
            out.append(
                Verdict(
                    f"{rule.label}, gap {gap:g}: <= {TARGET_DC_TOKENS:.0%} of majority_vote's "
                    "tokens at equal or better accuracy"
                    + (" (no signal: reported, not a target)" if gap == 0 else ""),
                    ok if gap > 0 else None,
                    f"{tokens:.1%} of the tokens, accuracy {accuracy:.1%} vs {mv_accuracy:.1%}",
                )
            )
    return out


def stopping(
    k: Annotated[int, typer.Option(help="Samples (the budget) for every rule")] = 32,
    warmup: Annotated[int, typer.Option(help="deepconf's warm-up traces")] = 8,
    window: Annotated[
        int, typer.Option(help="deepconf's confidence window (tokens; traces are shorter here)")
    ] = 32,
    problems: Annotated[int, typer.Option(help="Problems per leader probability and gap")] = 30,
    leader: Annotated[
        str, typer.Option(help="Leader (correct answer) probabilities, comma-separated")
    ] = "0.3,0.4,0.5,0.6,0.7,0.8,0.9",
    gap: Annotated[
        str,
        typer.Option(help="Confidence gaps between correct and wrong traces, in sd (0: none)"),
    ] = "0,1,2",
    distractors: Annotated[int, typer.Option(min=1, max=len(DISTRACTORS))] = 3,
    min_tokens: Annotated[int, typer.Option(min=2)] = 48,
    max_tokens: Annotated[int, typer.Option(min=2)] = 160,
    confidence: Annotated[float, typer.Option(help="Correct traces' mean token confidence")] = 4.0,
    token_noise: Annotated[float, typer.Option(help="Per-token sd around a trace's level")] = 1.0,
    seed: int = 0,
    output: Annotated[Path | None, typer.Option(help="Also write the report here")] = None,
) -> None:
    """Simulate the adaptive stopping rules (adaptive_consistency, deepconf) against
    majority_vote at the same k: samples, tokens, agreement with the full-k majority, accuracy."""
    workload = Workload(
        k=k,
        leaders=tuple(float(x) for x in leader.split(",")),
        gaps=tuple(float(x) for x in gap.split(",")),
        distractors=distractors,
        problems=problems,
        min_tokens=min_tokens,
        max_tokens=max(max_tokens, min_tokens),
        confidence=confidence,
        token_noise=token_noise,
        seed=seed,
    )

    def report() -> str:
        rules = default_rules(k, warmup, window)
        drawn = draw_problems(workload)
        progress(f"simulating {len(rules)} rules on {len(drawn)} problems")
        started = time.perf_counter()
        tallies, by_leader = asyncio.run(simulate(rules, drawn, token_noise))
        lines = [
            "# ttc-gateway bench stopping (simulated: no model, the real strategy code)",
            f"command: {command_line()}",
            f"ttc-gateway {version('ttc-gateway')} ({git_revision()}), Python "
            f"{platform.python_version()}, {cpu_model()}",
            f"k={k} (deepconf warm-up {warmup}, window {window}), "
            f"{problems} problems per (leader, gap), "
            f"leader p in {list(workload.leaders)}, {distractors} distractors sharing 1-p, "
            f"trace length {min_tokens}-{workload.max_tokens} tokens, correct traces' "
            f"confidence {confidence:g} (sd 1, token noise sd {token_noise:g}), seed {seed}; "
            f"simulated in {time.perf_counter() - started:.0f} s",
            *render(rules, tallies, workload.gaps),
            *render_by_leader(rules, by_leader, workload.leaders),
            "",
            "targets:",
            *(v.line() for v in verdicts(rules, tallies, workload.gaps)),
        ]
        return "\n".join(lines)

    run_bench("stopping", report, output)
