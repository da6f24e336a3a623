"""``ttc-gateway bench strategies``: accuracy, tokens and wall time of each strategy, next to
optillm's majority voting on the same engine, in one run.

Method: the first N problems of a GSM8K-style JSONL file (``{"question", "answer"}``) are sent
to the gateway once per strategy, ``--concurrency`` problems in flight at a time, each as one
chat request with the same system message and the question plus an instruction to end with
"The answer is <number>.". A reply is correct when ``answer_key(content)`` equals the gold key
(``gsm8k_gold`` when the answer field has ``####``, else ``normalize_answer``). With one problem
in flight (the default) the arms (each strategy, and optillm) are interleaved: each problem goes
through every arm in turn, in an order rotated by one per problem, so that a change in the
machine's speed during the run, or a prompt cached by the arm before, falls on every arm alike.
With ``--concurrency`` above 1 the arms run one after another, with the machine left to settle
in between. Wall time is client-side, per request.

"Fastest single sample" (the first_finish target's yardstick) is measured by one streamed
``single`` request with ``n=k`` per problem: the time from sending it to the first choice that
carries a ``finish_reason`` (any: a sample cut at ``max_tokens`` is finished too). The time to the
first ``stop`` is reported beside it; the stream is closed then, which aborts the other choices.

optillm (``deploy/optillm/setup.sh``) runs as a proxy on a free loopback port, pointed at the
engine the gateway uses (the first healthy worker of the model's pool in the gateway's
``GET /ready``), and gets ``{"optillm_approach": "majority_voting", "k": k}`` in the body. Its
plugin asks the engine for ``n=k`` in one request and reports that request's
``usage.completion_tokens``; where the engine exports a generated-token counter (llama.cpp,
vLLM ``/metrics``), the engine's own count over each run is shown next to the reported one.

The gateway (unless ``--gateway-url`` names a running one) and optillm run in process groups of
their own and are stopped at the end, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import aiohttp
import typer
import yaml

from gateway.bench.common import (
    HOST,
    BenchError,
    Service,
    Verdict,
    command_line,
    cpu_model,
    git_revision,
    percentile,
    progress,
    run_bench,
    settle,
    version,
)
from gateway.config import GatewaySettings
from gateway.engines.embedded import free_port
from strategies.answers import answer_key, gsm8k_gold, normalize_answer

# GSM8K's test set (MIT licence, gateway/bench/data/gsm8k_LICENSE), shipped in the package.
DEFAULT_DATASET = Path(__file__).resolve().parent / "data" / "gsm8k_test.jsonl"
DEFAULT_STRATEGIES = "single,majority_vote,first_finish,short_m_at_k"
CHAT_PATH = "/v1/chat/completions"
SYSTEM_MESSAGE = "You are a helpful assistant who solves math word problems."
# The last sentence is what `answer_key` reads first (rule b, "the answer is").
INSTRUCTION = 'Reason step by step, then end with "The answer is <number>."'
REQUEST_TIMEOUT_S = 300.0
OPTILLM = "optillm"
OPTILLM_APPROACH = "majority_voting"
OPTILLM_USER_PREFIX = "User: "  # optillm's parse_conversation: f"User: {content}"
EARLY_STOP = ("first_finish", "short_m_at_k")
DEFAULT_ANSWER_BUDGET = 128  # X-TTC-Answer-Budget of the --thinking-budget arms
# Engine counters of generated tokens, by engine: llama.cpp server, vLLM.
ENGINE_TOKEN_COUNTERS = ("llamacpp:tokens_predicted_total", "vllm:generation_tokens_total")

# The issue's targets.
TARGET_SHORT_WALL = 0.75  # short_m_at_k (m=3, k=8) wall p50 <= 0.75x majority_vote (k=8)
TARGET_SHORT_TOKENS = 0.8  # ... and completion tokens <= 0.8x
TARGET_FIRST_FINISH = 1.2  # first_finish wall p50 <= 1.2x the fastest single sample
TARGET_WASTED_SHARE = 0.02  # wasted <= 2% of the completion tokens of early-stop strategies
TARGET_MAJORITY_VS_OPTILLM = 1.0  # our majority_vote no slower than optillm's majority voting
TARGET_SHORT_VS_OPTILLM = 0.75  # our short_m_at_k >= 25% faster, at equal or better accuracy


# -- problems and scoring -----------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    question: str
    gold: str


def gold_key(answer: str) -> str:
    """GSM8K's ``#### n`` when the answer field has one, else the whole field normalised."""
    return gsm8k_gold(answer) if "####" in answer else normalize_answer(answer)


def load_problems(path: Path, limit: int) -> list[Problem]:
    """The first ``limit`` problems of a JSONL file of ``{"question", "answer"}`` objects."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BenchError(f"cannot read dataset {path}: {exc}") from None
    problems: list[Problem] = []
    for number, line in enumerate(lines, start=1):
        if len(problems) == limit:
            break
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise BenchError(f"{path}:{number}: expected an object with question and answer")
        question, answer = record.get("question"), record.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str | int | float):
            raise BenchError(f"{path}:{number}: needs a string question and an answer")
        gold = gold_key(str(answer))
        if not gold:
            raise BenchError(f"{path}:{number}: the answer {answer!r} has no usable key")
        problems.append(Problem(question, gold))
    if not problems:
        raise BenchError(f"{path} holds no problems")
    return problems


def build_messages(question: str) -> list[dict[str, str]]:
    """The chat the gateway gets for a problem: the one the engine sees from optillm too.

    optillm's proxy flattens a conversation into one user turn, ``"User: <content>"`` (its
    ``parse_conversation``), before its plugin sends ``[system, user]`` upstream; the gateway
    forwards messages unchanged. So the gateway gets the flattened turn and optillm the plain one
    (``optillm_messages``): both engines' prompts are the same text, and wall time and tokens
    compare like for like. An explicit system message, because without one chat templates such
    as SmolLM2's insert a default one while optillm always sends its own (empty) one.
    """
    system, user = optillm_messages(question)
    return [system, {"role": "user", "content": OPTILLM_USER_PREFIX + user["content"]}]


def optillm_messages(question: str) -> list[dict[str, str]]:
    """What the benchmark sends optillm, which forwards it as ``build_messages`` does."""
    return [
        {"role": "system", "content": SYSTEM_MESSAGE},
        {"role": "user", "content": f"{question}\n\n{INSTRUCTION}"},
    ]


def is_correct(content: str | None, gold: str) -> bool:
    return content is not None and answer_key(content) == gold


# -- one request's outcome ----------------------------------------------------------------------
@dataclass
class Outcome:
    """What one problem's request gave: the answer's score, tokens, samples, wall time."""

    wall_ms: float
    correct: bool = False
    completion_tokens: int = 0
    prompt_tokens: int = 0
    wasted_tokens: int = 0
    launched: int | None = None
    aborted: int | None = None
    cost_usd: float | None = None  # ttc.cost_usd: price table + infrastructure
    energy_j: float | None = None  # ttc.energy_joules
    energy_method: str | None = None
    # Reasoning: usage.completion_tokens_details.reasoning_tokens, and from ttc.thinking.samples
    # how many samples it reports and how many of them the budget cut.
    thinking_tokens: int = 0
    thinking_samples: int = 0
    cut: int = 0
    error: str | None = None
    anomalies: list[str] = field(default_factory=list)


def _error_text(status: int, payload: Any) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        return f"{status} {error.get('code') or error.get('type') or ''}".strip()
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return f"{status} {payload['error'][:80]}"
    return str(status)


def _content(payload: dict[str, Any]) -> str | None:
    choices = payload.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    content = (choices[0].get("message") or {}).get("content")
    return content if isinstance(content, str) else None


def gateway_outcome(
    strategy: str,
    status: int,
    headers: dict[str, str],
    payload: Any,
    wall_ms: float,
    gold: str,
    thinking_budget: int | None = None,
) -> Outcome:
    """Score a gateway reply and check it against the strategy contract (``ttc`` object,
    ``usage`` = all samples, headers equal to the body, thinking within the budget sent);
    breaches are listed, not fatal."""
    if status != 200 or not isinstance(payload, dict):
        return Outcome(wall_ms, error=_error_text(status, payload))
    usage = payload.get("usage") or {}
    outcome = Outcome(
        wall_ms,
        correct=is_correct(_content(payload), gold),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        thinking_tokens=int(
            (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        ),
    )
    anomalies = outcome.anomalies
    if headers.get("x-ttc-strategy") != strategy:
        anomalies.append(f"X-TTC-Strategy header is {headers.get('x-ttc-strategy')!r}")
    ttc = payload.get("ttc")
    if isinstance(ttc, dict) and "cost_usd" in ttc:
        outcome.cost_usd = float(ttc["cost_usd"])
        outcome.energy_j = float(ttc["energy_joules"])
        outcome.energy_method = (ttc.get("energy") or {}).get("method")
    if isinstance(ttc, dict):
        _check_thinking(outcome, ttc, thinking_budget)
    if not isinstance(ttc, dict) or strategy == "single":
        if not isinstance(ttc, dict):
            anomalies.append("no `ttc` object in the body")
        outcome.launched, outcome.aborted = len(payload.get("choices") or []), 0
        return outcome
    samples = ttc.get("samples") or {}
    outcome.launched = int(samples.get("launched") or 0)
    outcome.aborted = int(samples.get("aborted") or 0)
    outcome.wasted_tokens = int(ttc.get("wasted_tokens") or 0)
    if ttc.get("strategy") != strategy:
        anomalies.append(f"ttc.strategy is {ttc.get('strategy')!r}")
    accounted = sum(int(samples.get(key) or 0) for key in ("finished", "aborted", "failed"))
    if accounted != outcome.launched:
        anomalies.append("ttc.samples: finished + aborted + failed != launched")
    sample_tokens = ttc.get("sample_tokens")
    if isinstance(sample_tokens, list):
        if sum(int(t) for t in sample_tokens) != outcome.completion_tokens:
            anomalies.append("usage.completion_tokens != sum(ttc.sample_tokens)")
        if len(sample_tokens) != outcome.launched:
            anomalies.append("len(ttc.sample_tokens) != ttc.samples.launched")
    else:
        anomalies.append("no ttc.sample_tokens list")
    wasted_header = headers.get("x-ttc-wasted-tokens")
    if wasted_header is None or float(wasted_header) != outcome.wasted_tokens:
        anomalies.append("X-TTC-Wasted-Tokens header != ttc.wasted_tokens")
    if outcome.wasted_tokens > outcome.completion_tokens:
        anomalies.append("ttc.wasted_tokens > usage.completion_tokens")
    return outcome


def _check_thinking(outcome: Outcome, ttc: dict[str, Any], budget: int | None) -> None:
    """Samples and cuts from ``ttc.thinking``, which must agree with ``usage``'s thinking
    share and, under a budget, keep every sample's thinking within it (a cut one at exactly it)."""
    thinking = ttc.get("thinking")
    if not isinstance(thinking, dict) or not isinstance(thinking.get("samples"), list):
        if budget is not None:
            outcome.anomalies.append("no ttc.thinking.samples list under a thinking budget")
        return
    samples = [s for s in thinking["samples"] if isinstance(s, dict)]
    tokens = [int(s.get("thinking_tokens") or 0) for s in samples]
    cuts = [bool(s.get("cut")) for s in samples]
    outcome.thinking_samples, outcome.cut = len(tokens), sum(cuts)
    # A step-wise strategy lists no samples: its thinking is its kept steps, in usage only.
    if samples and sum(tokens) != outcome.thinking_tokens:
        outcome.anomalies.append(
            "usage reasoning_tokens != sum(ttc.thinking.samples[].thinking_tokens)"
        )
    if budget is None:
        return
    if thinking.get("budget") != budget:
        outcome.anomalies.append(f"ttc.thinking.budget is {thinking.get('budget')!r}")
    if any(t > budget for t in tokens):
        outcome.anomalies.append("a sample thought more than the thinking budget")
    if any(cut and t != budget for t, cut in zip(tokens, cuts, strict=True)):
        outcome.anomalies.append("a cut sample's thinking is not exactly the budget")


def optillm_outcome(status: int, payload: Any, wall_ms: float, gold: str, k: int) -> Outcome:
    """optillm's reply: one choice and ``usage.completion_tokens`` only (no prompt tokens)."""
    if status != 200 or not isinstance(payload, dict):
        return Outcome(wall_ms, error=_error_text(status, payload))
    usage = payload.get("usage") or {}
    return Outcome(
        wall_ms,
        correct=is_correct(_content(payload), gold),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        launched=k,
        aborted=0,
    )


# -- aggregation --------------------------------------------------------------------------------
@dataclass
class Summary:
    """One row of the table: a strategy's whole run."""

    name: str
    problems: int
    correct: int
    errors: int
    completion_tokens: int
    prompt_tokens: int
    wasted_tokens: int
    wall_p50_ms: float | None
    wall_p95_ms: float | None
    requests_per_s: float
    launched: int | None
    aborted: int | None
    engine_tokens: int | None = None
    cost_usd: float | None = None
    energy_j: float | None = None
    energy_methods: frozenset[str] = frozenset()
    anomalies: Counter[str] = field(default_factory=Counter)
    error_kinds: Counter[str] = field(default_factory=Counter)
    walls_ms: tuple[float | None, ...] = ()  # per problem, in order; None: the request failed
    thinking_tokens: int = 0  # usage.completion_tokens_details.reasoning_tokens, summed
    thinking_samples: int = 0  # samples listed in ttc.thinking.samples
    cut: int = 0  # ... of which the thinking budget cut

    @property
    def wall_mean_ms(self) -> float | None:
        walls = [w for w in self.walls_ms if w is not None]
        return sum(walls) / len(walls) if walls else None

    @property
    def thinking_share(self) -> float | None:
        return self.thinking_tokens / self.completion_tokens if self.completion_tokens else None

    @property
    def accuracy(self) -> float:
        return self.correct / self.problems if self.problems else 0.0

    @property
    def cost_per_correct(self) -> float | None:
        """Cost-of-pass (Erol et al. 2025): dollars per correct answer; inf with none right."""
        return _per_correct(self.cost_usd, self.correct)

    @property
    def joules_per_correct(self) -> float | None:
        return _per_correct(self.energy_j, self.correct)

    @property
    def wasted_share(self) -> float | None:
        return self.wasted_tokens / self.completion_tokens if self.completion_tokens else None


def _per_correct(total: float | None, correct: int) -> float | None:
    if total is None:
        return None
    return total / correct if correct else float("inf")


Number = TypeVar("Number", int, float)


def _sum_known(values: Sequence[Number | None]) -> Number | None:
    """The sum of the values that are known; None if none is."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def summarize(
    name: str, outcomes: Sequence[Outcome], elapsed_s: float, engine_tokens: int | None = None
) -> Summary:
    """Totals over the answered requests; wall percentiles over the successful ones (a failed
    request counts as wrong and in ``errors``, and in requests/s)."""
    ok = [o for o in outcomes if o.error is None]
    walls = [o.wall_ms for o in ok]
    return Summary(
        name=name,
        problems=len(outcomes),
        correct=sum(o.correct for o in ok),
        errors=len(outcomes) - len(ok),
        completion_tokens=sum(o.completion_tokens for o in ok),
        prompt_tokens=sum(o.prompt_tokens for o in ok),
        wasted_tokens=sum(o.wasted_tokens for o in ok),
        wall_p50_ms=percentile(walls, 50) if walls else None,
        wall_p95_ms=percentile(walls, 95) if walls else None,
        requests_per_s=len(outcomes) / elapsed_s if elapsed_s > 0 else 0.0,
        launched=_sum_known([o.launched for o in ok]),
        aborted=_sum_known([o.aborted for o in ok]),
        engine_tokens=engine_tokens,
        cost_usd=_sum_known([o.cost_usd for o in ok]),
        energy_j=_sum_known([o.energy_j for o in ok]),
        energy_methods=frozenset(o.energy_method for o in ok if o.energy_method),
        anomalies=Counter(a for o in ok for a in o.anomalies),
        error_kinds=Counter(o.error for o in outcomes if o.error is not None),
        walls_ms=tuple(o.wall_ms if o.error is None else None for o in outcomes),
        thinking_tokens=sum(o.thinking_tokens for o in ok),
        thinking_samples=sum(o.thinking_samples for o in ok),
        cut=sum(o.cut for o in ok),
    )


@dataclass(frozen=True)
class PairedComparison:
    """Two arms over the same problems: the ratio of their total wall times, with a bootstrap
    95% interval (problems resampled with replacement), and on how many problems ours was
    faster. One run's per-problem times vary by tens of percent (random chain lengths), so the
    interval says whether a difference of a few percent is there at all."""

    problems: int
    total_ratio: float
    low: float
    high: float
    faster: int


BOOTSTRAP_DRAWS = 10_000


def paired_comparison(
    ours: Sequence[float | None], theirs: Sequence[float | None], seed: int = 0
) -> PairedComparison | None:
    pairs = [(a, b) for a, b in zip(ours, theirs, strict=False) if a is not None and b is not None]
    if len(pairs) < 2 or not sum(b for _, b in pairs):
        return None
    rng = random.Random(seed)  # the same run gives the same interval
    draws = []
    for _ in range(BOOTSTRAP_DRAWS):
        sample = rng.choices(pairs, k=len(pairs))
        draws.append(sum(a for a, _ in sample) / (sum(b for _, b in sample) or 1.0))
    draws.sort()
    return PairedComparison(
        problems=len(pairs),
        total_ratio=sum(a for a, _ in pairs) / sum(b for _, b in pairs),
        low=draws[int(0.025 * BOOTSTRAP_DRAWS)],
        high=draws[int(0.975 * BOOTSTRAP_DRAWS) - 1],
        faster=sum(a < b for a, b in pairs),
    )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


# -- SSE and engine metrics parsing -------------------------------------------------------------
def choice_events(line: bytes) -> list[tuple[int, str, str | None]]:
    """``(index, text, finish_reason)`` of each choice in one SSE line (``data: {...}``)."""
    if not line.startswith(b"data:"):
        return []
    data = line[5:].strip()
    if not data or data == b"[DONE]":
        return []
    try:
        event = json.loads(data)
    except json.JSONDecodeError:
        return []
    if not isinstance(event, dict):
        return []
    if "error" in event:
        raise BenchError(f"stream ended with an error event: {data[:300]!r}")
    return [
        (
            int(c.get("index", 0)),
            (c.get("delta") or {}).get("content") or "",
            c.get("finish_reason"),
        )
        for c in event.get("choices") or []
        if isinstance(c, dict)
    ]


def finish_reasons(line: bytes) -> list[str]:
    """The ``finish_reason`` values carried by one SSE line, if any."""
    return [reason for _, _, reason in choice_events(line) if reason]


def generated_tokens(metrics_text: str) -> int | None:
    """The engine's generated-token counter from Prometheus text, or None if it has none."""
    for name in ENGINE_TOKEN_COUNTERS:
        total, seen = 0.0, False
        for line in metrics_text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
                total += float(line.rsplit(None, 1)[1])
                seen = True
        if seen:
            return int(total)
    return None


# -- the report ---------------------------------------------------------------------------------
def _num(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


@dataclass
class FastestSample:
    """Per problem, from sending a streamed ``single`` request with ``n=k``: ms to its first
    finished choice (any reason: a ``length`` cut too), and ms to the first choice that finished
    with ``stop`` and an extractable answer, the rule ``first_finish`` decides by (when no
    choice does, the end of the stream, when ``first_finish`` must stop waiting too)."""

    first_ms: list[float] = field(default_factory=list)
    first_answer_ms: list[float] = field(default_factory=list)
    answered: int = 0  # problems where some choice finished with an answer
    errors: int = 0

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.first_answer_ms, 50) if self.first_answer_ms else None

    @property
    def any_finish_p50_ms(self) -> float | None:
        return percentile(self.first_ms, 50) if self.first_ms else None


def render_table(rows: Sequence[Summary]) -> list[str]:
    lines = [
        "| strategy | accuracy | completion tokens | prompt tokens | wasted tokens "
        "| engine-counted tokens | wall p50 ms | wall p95 ms | req/s | samples launched "
        "| samples aborted | errors | cost $ | $ per correct | energy J | J per correct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in rows:
        method = "/".join(sorted(s.energy_methods))
        lines.append(
            f"| {s.name} | {s.correct}/{s.problems} ({s.accuracy:.0%}) "
            f"| {s.completion_tokens:,} | {s.prompt_tokens:,} | {s.wasted_tokens:,} "
            f"| {_num(s.engine_tokens)} | {_num(s.wall_p50_ms)} | {_num(s.wall_p95_ms)} "
            f"| {s.requests_per_s:.3f} | {_num(s.launched)} | {_num(s.aborted)} | {s.errors} "
            f"| {_money(s.cost_usd)} | {_money(s.cost_per_correct)} "
            f"| {_num(s.energy_j, ',.1f')}{f' ({method})' if method else ''} "
            f"| {_num(s.joules_per_correct, ',.1f')} |"
        )
    return lines


def _money(value: float | None) -> str:
    return "-" if value is None else ("∞" if value == float("inf") else f"{value:.6f}")


# -- the thinking-budget sweep -------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    """One strategy at one thinking budget: ``X-TTC-Thinking-Budget`` (None: not sent, the
    strategy as it is, the arm the others are compared with)."""

    strategy: str
    thinking_budget: int | None = None

    @property
    def name(self) -> str:
        if self.thinking_budget is None:
            return self.strategy
        return f"{self.strategy} t={self.thinking_budget}"


def parse_budgets(text: str) -> tuple[int, ...]:
    """``--thinking-budget 0,16,64`` -> (0, 16, 64): tokens of thinking per sample, each >= 0."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise typer.BadParameter("--thinking-budget: name at least one budget, e.g. 0,16,64")
    try:
        budgets = tuple(int(part) for part in parts)
    except ValueError:
        raise typer.BadParameter(
            f"--thinking-budget {text!r}: expected whole numbers of tokens, e.g. 0,16,64"
        ) from None
    if any(b < 0 for b in budgets):
        raise typer.BadParameter(f"--thinking-budget {text!r}: a budget is negative")
    if len(set(budgets)) != len(budgets):
        raise typer.BadParameter(f"--thinking-budget {text!r}: a budget is repeated")
    return budgets


def arm_list(strategies: Sequence[str], budgets: Sequence[int]) -> list[Arm]:
    """Each strategy with no budget, then at each budget in the order given; without budgets,
    one arm per strategy, named as the strategy (the benchmark as it was)."""
    return [Arm(strategy, budget) for strategy in strategies for budget in (None, *budgets)]


def _vs(value: float | None, base: float | None) -> str:
    """``value`` / ``base`` as ``1.23x``; "-" when either is unknown or infinite (no correct
    answer: the accuracy column says so) or the base is 0."""
    if value is None or base is None or not base or math.inf in (value, base):
        return "-"
    return f"{value / base:.2f}x"


def render_sweep_table(arms: Sequence[Arm], rows: dict[str, Summary]) -> list[str]:
    """Per strategy and thinking budget, side by side: accuracy, tokens and their thinking
    share, samples cut at the budget, wall time, cost, and each against the same strategy's
    arm with no budget."""
    lines = [
        "| strategy | thinking budget | accuracy | completion tokens | thinking tokens (share) "
        "| samples cut | wall p50 ms | wall mean ms | cost $ | $ per correct "
        "| tokens vs no budget | wall p50 vs | wall mean vs | cost vs | $ per correct vs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in arms:
        s = rows.get(arm.name)
        if s is None:
            continue
        base = rows.get(Arm(arm.strategy).name)
        share = s.thinking_share
        cut = f"{s.cut}/{s.thinking_samples}" if s.thinking_samples else "-"
        budget = "none" if arm.thinking_budget is None else f"{arm.thinking_budget:,}"
        lines.append(
            f"| {arm.strategy} | {budget} | {s.correct}/{s.problems} ({s.accuracy:.0%}) "
            f"| {s.completion_tokens:,} | {s.thinking_tokens:,}"
            f"{'' if share is None else f' ({share:.0%})'} | {cut} "
            f"| {_num(s.wall_p50_ms)} | {_num(s.wall_mean_ms)} | {_money(s.cost_usd)} "
            f"| {_money(s.cost_per_correct)} "
            + (
                "| - | - | - | - | - |"
                if base is None
                else f"| {_vs(s.completion_tokens, base.completion_tokens)} "
                f"| {_vs(s.wall_p50_ms, base.wall_p50_ms)} "
                f"| {_vs(s.wall_mean_ms, base.wall_mean_ms)} "
                f"| {_vs(s.cost_usd, base.cost_usd)} "
                f"| {_vs(s.cost_per_correct, base.cost_per_correct)} |"
            )
        )
    return lines


def sweep_checks(arms: Sequence[Arm], rows: dict[str, Summary]) -> list[str]:
    """Whether each budget arm's figures reconcile: its thinking tokens within budget x
    samples, at least budget x cut samples (a cut is at exactly the budget), and the engine's
    own count of generated tokens next to the completion tokens of ``usage``."""
    lines = []
    for arm in arms:
        s, t = rows.get(arm.name), arm.thinking_budget
        if s is None or t is None:
            continue
        # Samples listed in ttc.thinking each think at most t; a step-wise strategy lists
        # none, and its kept steps are at most t per request.
        per, count = (
            ("samples", s.thinking_samples)
            if s.thinking_samples
            else ("requests", s.problems - s.errors)
        )
        most, least = t * count, t * s.cut
        within = "ok" if least <= s.thinking_tokens <= most else "DOES NOT RECONCILE"
        engine = (
            ""
            if s.engine_tokens is None
            else f"; engine counted {s.engine_tokens:,} generated tokens, usage "
            f"{s.completion_tokens:,} ({s.engine_tokens - s.completion_tokens:+,})"
        )
        lines.append(
            f"- {arm.name}: thinking {s.thinking_tokens:,} tokens over {count} {per}, "
            f"{s.cut} cut: {least:,} (t x cut) <= {s.thinking_tokens:,} <= {most:,} "
            f"(t x {per}) {within}{engine}"
        )
    return lines


def _at_most(name: str, value: float | None, limit: float) -> Verdict:
    if value is None:
        return Verdict(name, None, f"not measured in this run (target ≤ {limit:g}x)")
    return Verdict(name, value <= limit, f"{value:.2f}x (target ≤ {limit:g}x)")


def ratios_and_targets(
    rows: dict[str, Summary], fastest: FastestSample | None, k: int, m: int
) -> tuple[list[str], list[Verdict]]:
    """The ratios under the table and the issue's targets, from the rows measured."""
    short, major = rows.get("short_m_at_k"), rows.get("majority_vote")
    first, peer = rows.get("first_finish"), rows.get(OPTILLM)

    def wall(s: Summary | None) -> float | None:
        return s.wall_p50_ms if s is not None else None

    def tokens(s: Summary | None) -> float | None:
        return s.completion_tokens if s is not None else None

    fastest_p50 = fastest.p50_ms if fastest is not None else None
    lines: list[str] = []
    verdicts: list[Verdict] = []

    short_wall, short_tokens = ratio(wall(short), wall(major)), ratio(tokens(short), tokens(major))
    lines.append(
        f"- short_m_at_k (m={m}, k={k}) vs majority_vote (k={k}): wall p50 "
        f"{_times(short_wall)}, completion tokens {_times(short_tokens)}"
    )
    verdicts.append(
        _at_most("short_m_at_k wall p50 vs majority_vote", short_wall, TARGET_SHORT_WALL)
    )
    verdicts.append(
        _at_most(
            "short_m_at_k completion tokens vs majority_vote", short_tokens, TARGET_SHORT_TOKENS
        )
    )

    first_ratio = ratio(wall(first), fastest_p50)
    if fastest is not None and fastest_p50 is not None:
        any_p50 = fastest.any_finish_p50_ms
        lines.append(
            f"- first_finish wall p50 {_num(wall(first))} ms vs fastest single sample p50 "
            f"{fastest_p50:,.0f} ms: {_times(first_ratio)}. Fastest single sample: per problem, "
            f"a streamed `single` request with n={k}, time to its first choice that finished "
            f"with `stop` and an answer (first_finish's own rule; {fastest.answered}/"
            f"{len(fastest.first_answer_ms)} problems had one, the others count the end of "
            f"the stream). Time to the first finished choice of any kind (a `length` cut or no "
            f"answer included): p50 {_num(any_p50)} ms, first_finish "
            f"{_times(ratio(wall(first), any_p50))} of it"
        )
    verdicts.append(
        _at_most("first_finish wall p50 vs fastest single sample", first_ratio, TARGET_FIRST_FINISH)
    )

    for name in EARLY_STOP:
        row = rows.get(name)
        share = row.wasted_share if row is not None else None
        if row is not None:
            lines.append(
                f"- {name}: wasted/total completion tokens {row.wasted_tokens:,}/"
                f"{row.completion_tokens:,} = {_num(share and share * 100, '.2f')}%"
            )
        detail = (
            "not measured in this run"
            if share is None
            else f"{share:.2%} of completion tokens (target ≤ {TARGET_WASTED_SHARE:.0%})"
        )
        verdicts.append(
            Verdict(
                f"{name} wasted tokens",
                None if share is None else share <= TARGET_WASTED_SHARE,
                detail,
            )
        )

    major_vs_peer, short_vs_peer = ratio(wall(major), wall(peer)), ratio(wall(short), wall(peer))
    if peer is not None:
        accuracies = ", ".join(
            f"{s.name} {s.correct}/{s.problems}" for s in (major, short, peer) if s is not None
        )
        lines.append(
            f"- vs optillm majority_voting (k={k}): our majority_vote wall p50 "
            f"{_times(major_vs_peer)}, our short_m_at_k wall p50 {_times(short_vs_peer)}; "
            f"accuracy {accuracies}"
        )
        paired = paired_comparison(major.walls_ms, peer.walls_ms) if major is not None else None
        if paired is not None:
            lines.append(
                f"- majority_vote vs optillm, problem by problem: total wall time "
                f"{paired.total_ratio:.3f}x (bootstrap 95% interval {paired.low:.3f}-"
                f"{paired.high:.3f}x over {paired.problems} problems), faster on "
                f"{paired.faster}/{paired.problems}"
            )
    verdicts.append(
        _at_most(
            "majority_vote wall p50 vs optillm majority_voting",
            major_vs_peer,
            TARGET_MAJORITY_VS_OPTILLM,
        )
    )
    if short_vs_peer is None or short is None or peer is None:
        verdicts.append(
            Verdict(
                "short_m_at_k vs optillm majority_voting",
                None,
                f"not measured in this run (target ≤ {TARGET_SHORT_VS_OPTILLM:g}x wall p50 at "
                "equal or better accuracy)",
            )
        )
    else:
        verdicts.append(
            Verdict(
                "short_m_at_k vs optillm majority_voting",
                short_vs_peer <= TARGET_SHORT_VS_OPTILLM and short.correct >= peer.correct,
                f"wall p50 {short_vs_peer:.2f}x (target ≤ {TARGET_SHORT_VS_OPTILLM:g}x), accuracy "
                f"{short.correct}/{short.problems} vs {peer.correct}/{peer.problems} (target ≥)",
            )
        )
    return lines, verdicts


# -- talking to the servers ---------------------------------------------------------------------
async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        if response.status != 200:
            raise BenchError(f"GET {url} answered {response.status}: {await response.text()}")
        return await response.json(content_type=None)


async def _engine_tokens(session: aiohttp.ClientSession, engine_url: str | None) -> int | None:
    if engine_url is None:
        return None
    try:
        async with session.get(engine_url + "/metrics") as response:
            if response.status != 200:
                return None
            return generated_tokens(await response.text())
    except (aiohttp.ClientError, TimeoutError):
        return None


@dataclass
class Target:
    """What the run talks to: the gateway, its model, and the engine behind that model."""

    gateway_url: str
    model: str
    strategies: dict[str, set[str]]  # name -> parameter names, from GET /v1/strategies
    engine: str | None  # engine kind from /ready, e.g. "llamacpp"
    engine_url: str | None  # first healthy worker of the model's pool


async def discover(session: aiohttp.ClientSession, gateway_url: str, model: str | None) -> Target:
    models = await _get_json(session, gateway_url + "/v1/models")
    names = [m["id"] for m in models.get("data") or []]
    if not names:
        raise BenchError(f"{gateway_url}/v1/models lists no model")
    if model is None:
        model = names[0]
    elif model not in names:
        raise BenchError(f"model {model!r} is not served by {gateway_url} ({', '.join(names)})")
    listing = await _get_json(session, gateway_url + "/v1/strategies")
    strategies = {
        s["name"]: {p["name"] for p in s.get("parameters") or []} for s in listing.get("data") or []
    }
    async with session.get(gateway_url + "/ready") as response:
        ready = await response.json(content_type=None)
    engine = engine_url = None
    for pool in ready.get("pools") or []:
        if pool.get("model") != model:
            continue
        healthy = [w["url"] for w in pool.get("workers") or [] if w.get("healthy")]
        if healthy:
            engine, engine_url = pool.get("engine"), healthy[0].rstrip("/")
            break
    return Target(gateway_url, model, strategies, engine, engine_url)


@dataclass(frozen=True)
class Sampling:
    k: int
    m: int
    max_tokens: int
    temperature: float
    # (strategy, parameter, value) from --param, e.g. ("deepconf", "warmup", "4")
    params: tuple[tuple[str, str, str], ...] = ()
    # --thinking-budget: each strategy also runs at each of these (its arms); and the answer
    # budget those arms send
    thinking_budgets: tuple[int, ...] = ()
    answer_budget: int = DEFAULT_ANSWER_BUDGET


def parse_param(text: str) -> tuple[str, str, str]:
    """``deepconf.warmup=4`` -> ("deepconf", "warmup", "4")."""
    target, eq, value = text.partition("=")
    strategy, dot, name = target.partition(".")
    if not (eq and dot and strategy and name and value):
        raise typer.BadParameter(f"--param {text!r}: expected STRATEGY.NAME=VALUE")
    return strategy, name, value


def _ttc_headers(
    strategy: str, parameters: set[str], sampling: Sampling, thinking_budget: int | None = None
) -> dict[str, str]:
    headers = {"X-TTC-Strategy": strategy}
    if thinking_budget is not None:
        headers["X-TTC-Thinking-Budget"] = str(thinking_budget)
        headers["X-TTC-Answer-Budget"] = str(sampling.answer_budget)
    if "k" in parameters:
        headers["X-TTC-K"] = str(sampling.k)
    if "m" in parameters:
        headers["X-TTC-M"] = str(sampling.m)
    for target, name, value in sampling.params:
        if target == strategy:
            headers["X-TTC-" + "-".join(w.capitalize() for w in name.split("_"))] = value
    return headers


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, str], Any, float]:
    """POST and read the whole answer; (status, lower-cased headers, JSON or text, wall ms)."""
    started = time.perf_counter()
    try:
        async with session.post(url, json=body, headers=headers) as response:
            raw = await response.read()
            wall_ms = (time.perf_counter() - started) * 1000
            got = {k.lower(): v for k, v in response.headers.items()}
            try:
                payload: Any = json.loads(raw)
            except ValueError:
                payload = raw[:200].decode(errors="replace")
            return response.status, got, payload, wall_ms
    except TimeoutError:
        return 0, {}, {"error": f"no answer in {REQUEST_TIMEOUT_S:.0f} s"}, REQUEST_TIMEOUT_S * 1e3
    except aiohttp.ClientError as exc:
        return 0, {}, {"error": f"{type(exc).__name__}: {exc}"}, 0.0


TIMEOUT_ERROR = f"0 no answer in {REQUEST_TIMEOUT_S:.0f} s"
TIMEOUTS_TO_GIVE_UP = 2


def _progress_outcome(name: str, index: int, outcome: Outcome) -> None:
    progress(
        f"  {name} #{index + 1}: {'ok   ' if outcome.correct else 'wrong'} "
        f"{outcome.wall_ms:9,.0f} ms {outcome.completion_tokens:6,} tokens"
        + (f" launched {outcome.launched} aborted {outcome.aborted}" if outcome.aborted else "")
        + (f" wasted {outcome.wasted_tokens}" if outcome.wasted_tokens else "")
        + (f" ERROR {outcome.error}" if outcome.error else "")
    )


async def _run_all(
    name: str,
    problems: Sequence[Problem],
    concurrency: int,
    one: Callable[[Problem], Awaitable[Outcome]],
) -> tuple[list[Outcome], float]:
    """Every problem through ``one``, ``concurrency`` at a time. After two timeouts the rest
    are not sent (a hung engine would otherwise cost the timeout once per problem)."""
    gate = asyncio.Semaphore(concurrency)
    timeouts = 0

    async def bounded(index: int, problem: Problem) -> Outcome:
        nonlocal timeouts
        async with gate:
            if timeouts >= TIMEOUTS_TO_GIVE_UP:
                return Outcome(0.0, error=f"not sent: {timeouts} requests had timed out")
            outcome = await one(problem)
        timeouts += outcome.error == TIMEOUT_ERROR
        _progress_outcome(name, index, outcome)
        return outcome

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(bounded(i, p) for i, p in enumerate(problems)))
    return list(outcomes), time.perf_counter() - started


Ask = Callable[[Problem], Awaitable[Outcome]]


def gateway_asker(
    session: aiohttp.ClientSession, target: Target, arm: Arm, sampling: Sampling
) -> Ask:
    """One problem as one chat request to the gateway with the arm's strategy and budget."""
    strategy, budget = arm.strategy, arm.thinking_budget
    headers = _ttc_headers(strategy, target.strategies[strategy], sampling, budget)
    url = target.gateway_url + CHAT_PATH

    async def one(problem: Problem) -> Outcome:
        body = {
            "model": target.model,
            "messages": build_messages(problem.question),
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
        }
        status, got, payload, wall_ms = await _post(session, url, body, headers)
        return gateway_outcome(strategy, status, got, payload, wall_ms, problem.gold, budget)

    return one


def optillm_asker(
    session: aiohttp.ClientSession, optillm_url: str, model: str, sampling: Sampling
) -> Ask:
    """One problem as one chat request to optillm with its majority voting."""
    url = optillm_url + CHAT_PATH

    async def one(problem: Problem) -> Outcome:
        body = {
            "model": model,
            "messages": optillm_messages(problem.question),
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "optillm_approach": OPTILLM_APPROACH,  # server.py proxy(): body field > --approach
            "k": sampling.k,  # copied into request_config, read by majority_voting_plugin.run
        }
        status, _, payload, wall_ms = await _post(session, url, body, {})
        return optillm_outcome(status, payload, wall_ms, problem.gold, sampling.k)

    return one


async def run_interleaved(
    session: aiohttp.ClientSession,
    arms: dict[str, Ask],
    problems: Sequence[Problem],
    engine_url: str | None,
) -> dict[str, Summary]:
    """Each problem through every arm in turn, one request at a time, the order rotated by one
    per problem: a drift in the machine's speed, or the engine's prompt cache warmed by the
    arm before, falls on every arm alike. Engine tokens are read around each request."""
    names = list(arms)
    outcomes: dict[str, list[Outcome]] = {name: [] for name in names}
    elapsed = dict.fromkeys(names, 0.0)
    engine: dict[str, int | None] = dict.fromkeys(names, 0)
    timeouts = dict.fromkeys(names, 0)
    for index, problem in enumerate(problems):
        turn = index % len(names)
        for name in names[turn:] + names[:turn]:
            if timeouts[name] >= TIMEOUTS_TO_GIVE_UP:
                outcome = Outcome(0.0, error=f"not sent: {timeouts[name]} requests had timed out")
            else:
                before = await _engine_tokens(session, engine_url)
                started = time.perf_counter()
                outcome = await arms[name](problem)
                elapsed[name] += time.perf_counter() - started
                after = await _settled_engine_tokens(session, engine_url)
                delta, counted = _difference(before, after), engine[name]
                engine[name] = None if delta is None or counted is None else counted + delta
                timeouts[name] += outcome.error == TIMEOUT_ERROR
            outcomes[name].append(outcome)
            _progress_outcome(name, index, outcome)
    return {name: summarize(name, outcomes[name], elapsed[name], engine[name]) for name in names}


ENGINE_SETTLE_POLL_S = 0.15
ENGINE_SETTLE_MAX_S = 5.0


async def _settled_engine_tokens(
    session: aiohttp.ClientSession, engine_url: str | None
) -> int | None:
    """The engine's generated-token counter once it stops moving: an engine books a sequence
    when it ends, aborted ones a moment after the stream closed, and in an interleaved run
    those tokens would otherwise land on the next arm's request."""
    last = await _engine_tokens(session, engine_url)
    deadline = time.monotonic() + ENGINE_SETTLE_MAX_S
    while last is not None and time.monotonic() < deadline:
        await asyncio.sleep(ENGINE_SETTLE_POLL_S)
        now = await _engine_tokens(session, engine_url)
        if now == last:
            return now
        last = now
    return last


async def first_finish_ms(
    session: aiohttp.ClientSession, target: Target, problem: Problem, sampling: Sampling
) -> tuple[float, float, bool]:
    """One streamed ``single`` request with ``n=k``: ms to the first finished choice, ms to the
    first choice finished with ``stop`` and an answer (else to the end of the stream), and
    whether one did. The stream is closed at that point, which aborts the other choices."""
    body = {
        "model": target.model,
        "messages": build_messages(problem.question),
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "n": sampling.k,
        "stream": True,
    }
    first: float | None = None
    texts: dict[int, list[str]] = {}
    started = time.perf_counter()
    async with session.post(
        target.gateway_url + CHAT_PATH, json=body, headers={"X-TTC-Strategy": "single"}
    ) as response:
        if response.status != 200:
            raise BenchError(f"streamed single n={sampling.k} got {response.status}")
        async for line in response.content:
            for index, text, reason in choice_events(line):
                texts.setdefault(index, []).append(text)
                if reason is None:
                    continue
                now = (time.perf_counter() - started) * 1000
                first = now if first is None else first
                if reason == "stop" and answer_key("".join(texts[index])) is not None:
                    return first, now, True
    if first is None:
        raise BenchError("streamed single request ended without a finished choice")
    return first, (time.perf_counter() - started) * 1000, False


async def measure_fastest_sample(
    session: aiohttp.ClientSession,
    target: Target,
    problems: Sequence[Problem],
    sampling: Sampling,
) -> FastestSample:
    """Sequential, with the machine left to settle after each closed stream, so the choices
    that the close aborts are not still decoding during the next problem."""
    result = FastestSample()
    for problem in problems:
        try:
            first, first_answer, answered = await first_finish_ms(
                session, target, problem, sampling
            )
        except (BenchError, aiohttp.ClientError, TimeoutError) as exc:
            progress(f"  fastest-sample probe failed: {exc}")
            result.errors += 1
            continue
        result.first_ms.append(first)
        result.first_answer_ms.append(first_answer)
        result.answered += answered
        await asyncio.to_thread(settle)
    return result


# -- child processes ----------------------------------------------------------------------------
class Thinking(StrEnum):
    """``--reasoning``: the values of ``pools[].reasoning.thinking``."""

    AUTO = "auto"
    OPENED = "opened"
    NONE = "none"


def gateway_config(thinking: Thinking) -> dict[str, Any]:
    """The configuration of the gateway the benchmark starts with ``--reasoning``: the embedded
    default (what it runs with no file) with its pools' ``reasoning.thinking`` set."""
    default = GatewaySettings.model_fields["pools"].get_default(call_default_factory=True)
    pools = []
    for pool in default:
        dumped = pool.model_dump(mode="json", exclude_none=True)
        dumped["reasoning"]["thinking"] = thinking.value
        pools.append(dumped)
    return {"pools": pools}


@dataclass
class ChildService(Service):
    """A ``Service`` with environment variables removed and a working directory of its own
    (optillm writes files where it runs; the gateway must not see a user's ``TTC_*``)."""

    unset_prefixes: tuple[str, ...] = ()
    cwd: Path | None = None

    def start(self) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not any(k.startswith(p) for p in self.unset_prefixes)
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**env, **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )


def _optillm_version(venv: Path) -> str:
    done = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('optillm'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip() or "?"


# -- the command --------------------------------------------------------------------------------


def _strategy_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise typer.BadParameter("--strategies: name at least one strategy")
    if len(set(names)) != len(names):
        raise typer.BadParameter(f"--strategies: a name is repeated in {text!r}")
    return names


def strategies(
    dataset: Annotated[
        Path,
        typer.Option(help="JSONL of {question, answer}; GSM8K's `#### n` answers are understood"),
    ] = DEFAULT_DATASET,
    problems: Annotated[
        int, typer.Option(min=1, max=100_000, help="The first N problems of the dataset")
    ] = 20,
    strategy_names: Annotated[
        str, typer.Option("--strategies", help="Comma-separated strategies, run in this order")
    ] = DEFAULT_STRATEGIES,
    k: Annotated[int, typer.Option("--k", min=1, max=64, help="Samples per request")] = 8,
    m: Annotated[int, typer.Option("--m", min=1, max=64, help="short_m_at_k's m")] = 3,
    max_tokens: Annotated[
        int, typer.Option(min=1, max=32_768, help="max_tokens of each sample")
    ] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.7,
    concurrency: Annotated[
        int, typer.Option(min=1, max=256, help="Problems in flight at once")
    ] = 1,
    gateway_url: Annotated[
        str | None,
        typer.Option(help="A running gateway; default: start `ttc-gateway serve` (no config)"),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model to ask for (default: the first of /v1/models)")
    ] = None,
    optillm: Annotated[
        bool | None,
        typer.Option(
            "--optillm/--no-optillm",
            help="Compare with optillm's majority voting (default: on when its venv exists)",
        ),
    ] = None,
    optillm_venv: Annotated[
        Path,
        typer.Option(
            envvar="OPTILLM_VENV",
            help="venv made by deploy/optillm/setup.sh (which makes .venv-optillm in the "
            "repository's root; the default is relative to the current directory)",
        ),
    ] = Path(".venv-optillm"),
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="A strategy's parameter as STRATEGY.NAME=VALUE, sent as its X-TTC-* header "
            "(repeat), e.g. --param deepconf.warmup=4"
        ),
    ] = None,
    thinking_budget: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated thinking budgets, e.g. 0,16,64,256: every strategy also runs "
            "at each, sent as X-TTC-Thinking-Budget, as arms of the same run"
        ),
    ] = None,
    answer_budget: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=32_768,
            help=f"X-TTC-Answer-Budget of the --thinking-budget arms (default "
            f"{DEFAULT_ANSWER_BUDGET})",
        ),
    ] = None,
    reasoning: Annotated[
        Thinking | None,
        typer.Option(
            help="reasoning.thinking of the pool of the gateway the benchmark starts (opened: "
            "all the model writes before </think> is thinking); ignored with --gateway-url",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Also write the report to this markdown file")
    ] = None,
) -> None:
    """Accuracy, tokens and wall time per strategy on GSM8K-style problems, and vs optillm."""
    names = _strategy_list(strategy_names)
    if m > k:
        raise typer.BadParameter(f"--m {m} is larger than --k {k}")
    budgets = parse_budgets(thinking_budget) if thinking_budget is not None else ()
    if answer_budget is not None and not budgets:
        raise typer.BadParameter("--answer-budget is sent only with --thinking-budget")
    sampling = Sampling(
        k=k,
        m=m,
        max_tokens=max_tokens,
        temperature=temperature,
        params=tuple(parse_param(p) for p in param or ()),
        thinking_budgets=budgets,
        answer_budget=answer_budget or DEFAULT_ANSWER_BUDGET,
    )
    run_bench(
        "strategies",
        lambda: _run(
            load_problems(dataset, problems),
            dataset,
            names,
            sampling,
            concurrency,
            gateway_url,
            model,
            optillm,
            optillm_venv,
            reasoning,
        ),
        output,
    )


def _run(
    problems: list[Problem],
    dataset: Path,
    names: list[str],
    sampling: Sampling,
    concurrency: int,
    gateway_url: str | None,
    model: str | None,
    optillm: bool | None,
    optillm_venv: Path,
    reasoning: Thinking | None = None,
) -> str:
    notes: list[str] = []
    load_before = os.getloadavg()[0]
    optillm_venv = optillm_venv.resolve()  # optillm runs in a directory of its own
    if optillm is None:
        optillm = (optillm_venv / "bin" / "optillm").exists()
        if not optillm:
            notes.append(f"optillm skipped: no venv at {optillm_venv} (deploy/optillm/setup.sh)")
    elif optillm and not (optillm_venv / "bin" / "optillm").exists():
        raise BenchError(f"--optillm: no venv at {optillm_venv} (run deploy/optillm/setup.sh)")
    elif not optillm:
        notes.append("optillm skipped (--no-optillm)")

    with tempfile.TemporaryDirectory(prefix="ttc-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        started_here = gateway_url is None
        if reasoning is not None and not started_here:
            notes.append(
                f"--reasoning {reasoning.value} ignored: the gateway at {gateway_url} was given, "
                "and its pools' reasoning.thinking is its own configuration's"
            )
        if gateway_url is None:
            port = free_port()
            argv = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
            if reasoning is not None:
                config = work / "gateway.yaml"
                config.write_text(yaml.safe_dump(gateway_config(reasoning)))
                argv += ["--config", str(config)]
            gateway = ChildService(
                "ttc-gateway",
                argv,
                port,
                "/ready",
                work / "gateway.log",
                env={"TTC_SERVER__ACCESS_LOG": "false", "TTC_SERVER__LOG_LEVEL": "warning"},
                unset_prefixes=("TTC_",),
            )
            stack.callback(gateway.stop)
            progress(
                "starting ttc-gateway serve (embedded default"
                + (f", reasoning.thinking: {reasoning.value}) …" if reasoning else ") …")
            )
            gateway.start()
            gateway.wait_ready(180)
            gateway_url = gateway.base_url
        gateway_url = gateway_url.rstrip("/")
        result = asyncio.run(
            _measure(
                work,
                stack,
                problems,
                names,
                sampling,
                concurrency,
                gateway_url,
                model,
                optillm,
                optillm_venv,
                notes,
            )
        )
    rows, fastest, target, optillm_log = result
    versions = [
        f"ttc-gateway {version('ttc-gateway')} ({git_revision()})",
        f"Python {platform.python_version()}",
        f"aiohttp {version('aiohttp')}",
    ]
    if started_here:
        versions.append(f"xllamacpp {version('xllamacpp')}")
    if OPTILLM in rows:
        versions.append(f"optillm {_optillm_version(optillm_venv)}")
    notes.extend(optillm_log)
    for row in rows.values():
        for error, count in row.error_kinds.items():
            notes.append(f"{row.name}: {count} request(s) failed: {error}")
        if (
            row.engine_tokens is not None
            and row.aborted
            and row.engine_tokens < row.completion_tokens
        ):
            notes.append(
                f"{row.name}: the engine counted {row.completion_tokens - row.engine_tokens:,} "
                f"tokens fewer than `usage` with {row.aborted} samples aborted: an engine may "
                "count a sequence only when it completes (llama.cpp seems to), the gateway counts "
                "every token it received"
            )
        for anomaly, count in row.anomalies.items():
            notes.append(
                f"{row.name}: contract breach in {count}/{row.problems} answers: {anomaly}"
            )
    lines_ratios, verdicts = ratios_and_targets(rows, fastest, sampling.k, sampling.m)
    where = (
        "given"
        if not started_here
        else "started by the benchmark (embedded default, no config)"
        if reasoning is None
        else f"started by the benchmark (embedded default, pools' reasoning.thinking: "
        f"{reasoning.value})"
    )
    lines = [
        "# ttc-gateway strategies benchmark",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}, "
        f"{platform.system()} {platform.release()}; 1-min load average {load_before:.2f} at the "
        f"start, {os.getloadavg()[0]:.2f} at the end (other work on the machine skews timings)",
        "",
        "Versions: " + "; ".join(versions),
        "",
        f"Setup: gateway {gateway_url} ({where}); model `{target.model}` on engine "
        f"{target.engine or '?'} at {target.engine_url or '?'}; dataset {dataset} "
        f"(first {len(problems)} problems); k={sampling.k}, m={sampling.m}, "
        f"max_tokens={sampling.max_tokens} per sample, temperature={sampling.temperature}, "
        + "".join(f"{t}.{n}={v}, " for t, n, v in sampling.params)
        + (
            f"thinking budgets {', '.join(map(str, sampling.thinking_budgets))} "
            f"(X-TTC-Thinking-Budget; X-TTC-Answer-Budget {sampling.answer_budget}) besides none, "
            if sampling.thinking_budgets
            else ""
        )
        + f"{concurrency} problem(s) in flight; per-request timeout {REQUEST_TIMEOUT_S:.0f} s; "
        + (
            "arms interleaved per problem (order rotated by one per problem)."
            if concurrency == 1
            else "strategies run one after another in the order shown."
        ),
        "",
        f"Prompt: system `{SYSTEM_MESSAGE}`; user: `{OPTILLM_USER_PREFIX}`, the question, a "
        f"blank line, then `{INSTRUCTION}` (optillm gets the turn without `{OPTILLM_USER_PREFIX}`"
        " and adds it itself, so the engine sees the same prompt from both). "
        "Correct = `answer_key(reply) == gold`.",
        "",
        "Columns: tokens are `usage` as each server reports it (the gateway sums every sample, "
        "aborted ones included); engine-counted tokens are the engine's own generated-token "
        "counter (`/metrics`) over that run; wall time is client-side per request; req/s is "
        "problems / the run's wall time.",
        *(["", *(f"Note: {n}" for n in notes)] if notes else []),
        "",
        *render_table(list(rows.values())),
        *(_sweep_section(names, sampling, rows, started_here) if sampling.thinking_budgets else []),
        "",
        "Ratios:",
        "",
        *lines_ratios,
        "",
        "Targets:",
        "",
        *(v.line() for v in verdicts),
    ]
    return "\n".join(lines)


def _sweep_section(
    names: list[str], sampling: Sampling, rows: dict[str, Summary], embedded: bool
) -> list[str]:
    arms = arm_list(names, sampling.thinking_budgets)
    return [
        "",
        "Thinking budgets: each strategy at each budget, against the same strategy with none "
        "(thinking tokens: usage.completion_tokens_details.reasoning_tokens; samples cut: "
        "ttc.thinking.samples[].cut over the samples it lists; ratios of totals, and of wall "
        "p50 and mean):",
        "",
        *(
            [
                "On this model the sweep measures the mechanics (tokens, time, cost as the "
                "budget moves), not a reasoning model's accuracy curve: SmolLM2-135M never "
                "writes </think>, so what counts as its thinking is what the pool's "
                "reasoning.thinking says.",
                "",
            ]
            if embedded
            else []
        ),
        *render_sweep_table(arms, rows),
        "",
        "Does each budget arm reconcile?",
        "",
        *sweep_checks(arms, rows),
    ]


async def _measure(
    work: Path,
    stack: contextlib.ExitStack,
    problems: list[Problem],
    names: list[str],
    sampling: Sampling,
    concurrency: int,
    gateway_url: str,
    model: str | None,
    optillm: bool,
    optillm_venv: Path,
    notes: list[str],
) -> tuple[dict[str, Summary], FastestSample | None, Target, list[str]]:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, connect=10)
    connector = aiohttp.TCPConnector(limit=max(concurrency, 1) + 4)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        target = await discover(session, gateway_url, model)
        runnable = [n for n in names if n in target.strategies]
        for name in names:
            if name not in target.strategies:
                notes.append(
                    f"{name} skipped: not offered by this gateway "
                    f"(GET /v1/strategies lists {', '.join(sorted(target.strategies))})"
                )
        progress(
            f"gateway {gateway_url}, model {target.model}, engine {target.engine} at "
            f"{target.engine_url}; {len(problems)} problems; strategies {', '.join(runnable)}"
        )
        # Warm-up: the first request of a fresh engine pays one-off costs.
        await _post(
            session,
            gateway_url + CHAT_PATH,
            {"model": target.model, "messages": build_messages("1+1?"), "max_tokens": 8},
            {"X-TTC-Strategy": "single"},
        )
        optillm_service: ChildService | None = None
        if optillm and target.engine_url is None:
            notes.append("optillm skipped: the gateway's /ready names no healthy worker")
        elif optillm:
            optillm_service = await _start_optillm(work, stack, target, optillm_venv)
        rows: dict[str, Summary] = {}
        if concurrency == 1:
            arms = {
                arm.name: gateway_asker(session, target, arm, sampling)
                for arm in arm_list(runnable, sampling.thinking_budgets)
            }
            if optillm_service is not None:
                arms[OPTILLM] = optillm_asker(
                    session, optillm_service.base_url, target.model, sampling
                )
            await asyncio.to_thread(settle)
            progress(f"{', '.join(arms)}: {len(problems)} problems, interleaved …")
            rows = await run_interleaved(session, arms, problems, target.engine_url)
        else:
            for arm in arm_list(runnable, sampling.thinking_budgets):
                name = arm.name
                await asyncio.to_thread(settle)
                progress(f"{name}: {len(problems)} problems …")
                before = await _engine_tokens(session, target.engine_url)
                one = gateway_asker(session, target, arm, sampling)
                outcomes, elapsed = await _run_all(name, problems, concurrency, one)
                after = await _engine_tokens(session, target.engine_url)
                rows[name] = summarize(name, outcomes, elapsed, _difference(before, after))
            if optillm_service is not None:
                await asyncio.to_thread(settle)
                progress(f"{OPTILLM} {OPTILLM_APPROACH} k={sampling.k}: {len(problems)} …")
                before = await _engine_tokens(session, target.engine_url)
                one = optillm_asker(session, optillm_service.base_url, target.model, sampling)
                outcomes, elapsed = await _run_all(OPTILLM, problems, concurrency, one)
                after = await _engine_tokens(session, target.engine_url)
                rows[OPTILLM] = summarize(OPTILLM, outcomes, elapsed, _difference(before, after))
        for row in rows.values():
            progress(_progress_line(row))

        optillm_log: list[str] = []
        if optillm_service is not None:
            optillm_service.stop()
            optillm_log = _optillm_notes(optillm_service.log_path, rows[OPTILLM], sampling.k)

        fastest: FastestSample | None = None
        if "first_finish" in rows and "single" in target.strategies:
            await asyncio.to_thread(settle)
            progress(f"fastest single sample: {len(problems)} streamed single n={sampling.k} …")
            fastest = await measure_fastest_sample(session, target, problems, sampling)
            progress(f"  p50 {_num(fastest.p50_ms)} ms over {len(fastest.first_ms)} problems")
            if fastest.errors:
                notes.append(f"fastest single sample: {fastest.errors} probe request(s) failed")
    return rows, fastest, target, optillm_log


def _difference(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


async def _start_optillm(
    work: Path, stack: contextlib.ExitStack, target: Target, venv: Path
) -> ChildService:
    """optillm as a proxy in front of the gateway's engine, stopped with the run."""
    assert target.engine_url is not None
    port = free_port()
    home = work / "optillm"
    home.mkdir()
    service = ChildService(
        "optillm",
        [
            str(venv / "bin" / "optillm"),
            "--base-url",
            target.engine_url + "/v1",
            "--host",
            HOST,
            "--port",
            str(port),
        ],
        port,
        "/health",
        work / "optillm.log",
        # OPTILLM_API_KEY would switch optillm to local in-process inference.
        env={"OPENAI_API_KEY": "unused", "HOME": str(home)},
        unset_prefixes=("OPTILLM_",),
        cwd=home,
    )
    stack.callback(service.stop)
    progress(f"starting optillm on port {port} → {target.engine_url}/v1 …")
    service.start()
    await asyncio.to_thread(service.wait_ready, 300)
    return service


def _optillm_notes(log_path: Path, summary: Summary, k: int) -> list[str]:
    """What optillm's log says it did with k and n, and how its usage compares."""
    try:
        log = log_path.read_text(errors="replace")
    except OSError:
        return []
    notes: list[str] = []
    upstream = len(re.findall(r"HTTP Request: POST \S+/chat/completions", log))
    if upstream:
        notes.append(
            f"optillm sent {upstream} upstream request(s) for {summary.problems} problems "
            f"(its majority_voting plugin asks for n=k={k} in one request)"
        )
    fallbacks = len(re.findall(r"Parallel generation failed", log))
    if fallbacks:
        notes.append(
            f"optillm: the n={k} request failed {fallbacks} time(s) and it fell back to {k} "
            "sequential requests"
        )
    requested = re.findall(r"Generating (\d+) candidates", log)
    if requested and set(requested) != {str(k)}:
        notes.append(f"optillm generated {sorted(set(requested))} candidates, not k={k}")
    if summary.engine_tokens is not None and summary.completion_tokens:
        notes.append(
            f"optillm reported {summary.completion_tokens:,} completion tokens; the engine "
            f"generated {summary.engine_tokens:,} in its run "
            f"({summary.engine_tokens / summary.completion_tokens:.2f}x): optillm passes on the "
            "upstream response's `usage`, whatever the engine counts in it for n > 1"
        )
    notes.append("optillm reports no prompt tokens")
    return notes


def _progress_line(s: Summary) -> str:
    return (
        f"  {s.name}: {s.correct}/{s.problems} correct, {s.completion_tokens:,} completion tokens "
        f"(engine {_num(s.engine_tokens)}), wasted {s.wasted_tokens:,}, wall p50 "
        f"{_num(s.wall_p50_ms)} ms p95 {_num(s.wall_p95_ms)} ms, {s.requests_per_s:.3f} req/s, "
        f"errors {s.errors}"
    )
