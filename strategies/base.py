"""What every strategy declares: its name, its paper, and its parameters with their limits.

Parameters arrive as ``X-TTC-<Name>`` headers or in the body's ``ttc`` object (header wins);
``StrategySpec.parse`` validates them and returns plain values, or raises ``InvalidParameter``
naming the offending one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from strategies.answers import AnswerBuckets
from strategies.sampling import RoleName, Sampler, SampleRequest


class UnknownStrategy(ValueError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown strategy {name!r}; known strategies: {', '.join(known)}")
        self.name = name


class InvalidParameter(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ParameterSpec:
    """One tunable of a strategy, with its type, default and allowed range."""

    name: str
    type: type
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    def parse(self, raw: Any) -> Any:
        try:
            if self.type is bool and isinstance(raw, str):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                value: Any = raw.lower() in ("true", "1")
            elif self.type is int and isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            else:
                value = self.type(raw)
        except (TypeError, ValueError):
            raise InvalidParameter(
                self.name, f"{self.name} must be of type {self.type.__name__}, got {raw!r}"
            ) from None
        if self.minimum is not None and value < self.minimum:
            raise InvalidParameter(self.name, f"{self.name} must be >= {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidParameter(self.name, f"{self.name} must be <= {self.maximum}, got {value}")
        if self.choices is not None and value not in self.choices:
            raise InvalidParameter(
                self.name, f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}"
            )
        return value

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type.__name__,
            "default": self.default,
            "description": self.description,
        }
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices is not None:
            out["choices"] = list(self.choices)
        return out


@dataclass(frozen=True)
class Budgets:
    """Per-request limits that apply whatever the strategy (``X-TTC-Max-Tokens-Total``,
    ``X-TTC-Max-Cost-USD``, ``X-TTC-Deadline-Ms``); None means no limit beyond the gateway's."""

    max_tokens_total: int | None = None
    max_cost_usd: float | None = None
    deadline_ms: int | None = None
    thinking_budget: int | None = None  # X-TTC-Thinking-Budget: tokens of thinking per sample
    answer_budget: int | None = None  # X-TTC-Answer-Budget: tokens of answer after a cut


BUDGET_PARAMETERS = (
    ParameterSpec("max_tokens_total", int, None, "Tokens all samples may generate", minimum=1),
    ParameterSpec("max_cost_usd", float, None, "Largest cost of the request in USD", minimum=0),
    ParameterSpec("deadline_ms", int, None, "Milliseconds until the answer is due", minimum=1),
    ParameterSpec(
        "thinking_budget", int, None, "Tokens each sample may think before its answer", minimum=0
    ),
    ParameterSpec(
        "answer_budget", int, None, "Tokens of answer after thinking cut at its budget", minimum=1
    ),
)


def split_budgets(given: Mapping[str, Any]) -> tuple[Budgets, dict[str, Any]]:
    """Separate and validate the budget parameters; return the strategy's own parameters."""
    budgets = {
        spec.name: spec.parse(given[spec.name]) for spec in BUDGET_PARAMETERS if spec.name in given
    }
    rest = {k: v for k, v in given.items() if k not in budgets}
    return Budgets(**budgets), rest


@dataclass
class StrategyTask:
    """One request, as a strategy sees it: what to sample, its parameters, the sampler, and a
    way to say "decided" (the gateway times the decision and counts tokens after it)."""

    request: SampleRequest
    params: dict[str, Any]
    sampler: Sampler
    decided: Callable[[], None]
    role: RoleName | None = None  # where to sample; None: the pool of the requested model
    # Send accepted text to a streaming client now (step-wise strategies); the pieces must be
    # a prefix of the final ``content``.
    on_text: Callable[[str], Awaitable[None]] | None = None
    # The same for accepted thinking (sent as ``reasoning_content`` deltas), which comes before
    # any answer text; the pieces must be a prefix of the final ``reasoning``.
    on_reasoning: Callable[[str], Awaitable[None]] | None = None
    # Which vote bucket each answer key joins (exact keys unless the gateway is configured
    # with an equivalence, ``answers.equivalence``).
    answers: AnswerBuckets = field(default_factory=AnswerBuckets)


@dataclass
class StrategyOutcome:
    """The answer and the report the gateway attaches to the response (``ttc``)."""

    content: str
    finish_reason: str
    winner: int | None = None
    answer: str | None = None
    votes: dict[str, int] = field(default_factory=dict)
    truncated: bool = False
    report: dict[str, Any] = field(default_factory=dict)  # strategy-specific decisions
    # What the strategy decided, counted by kind (cascade: "accepted" or "escalated";
    # spec_reason: draft steps "accepted" and "rejected"): exported as
    # ttc_strategy_decisions_total{strategy, decision}, so the gateway needs no strategy's name.
    decisions: dict[str, int] = field(default_factory=dict)
    # The winner's thinking (``message.reasoning_content``); "" when it did not think.
    reasoning: str = ""
    # The tokens of that thinking, for a strategy that writes it from raw-prompt calls (the
    # step-wise ones); None: the gateway counts the thinking of its chat samples itself.
    thinking_tokens: int | None = None


StrategyRun = Callable[[StrategyTask], Awaitable[StrategyOutcome]]


@dataclass(frozen=True)
class TokenBound:
    """The most tokens one request can use over all its upstream calls: prompt tokens sent and
    tokens generated. The gateway reserves this much of a key's limits and budget before it
    starts, and settles to what was used after."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# (validated parameters, prompt tokens of one call, max_tokens of one sample) -> bound
WorstCase = Callable[[dict[str, Any], int, int], TokenBound]


def samples_bound(samples: int, prompt_tokens: int, max_tokens: int) -> TokenBound:
    """``samples`` samples of one prompt, each its own call at worst (no shared prefill)."""
    return TokenBound(samples * prompt_tokens, samples * max_tokens)


@dataclass(frozen=True)
class StrategySpec:
    """A strategy's public description (name, source, parameters) and its ``run``; ``run`` is
    None only for ``single``, which the gateway serves as a pass-through."""

    name: str
    summary: str
    source: str
    parameters: tuple[ParameterSpec, ...] = field(default_factory=tuple)
    run: StrategyRun | None = None
    check: Callable[[dict[str, Any]], None] | None = None  # constraints between parameters
    worst_case: WorstCase | None = None  # default: ``k`` (or the request's n) samples

    def bound(
        self, params: dict[str, Any], prompt_tokens: int, max_tokens: int, n: int = 1
    ) -> TokenBound:
        """The most a request of this strategy can use (``TokenBound``)."""
        if self.worst_case is not None:
            return self.worst_case(params, prompt_tokens, max_tokens)
        return samples_bound(int(params.get("k", n)), prompt_tokens, max_tokens)

    def parse(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Validate given parameters (names in snake_case) and fill in defaults."""
        known = {p.name: p for p in self.parameters}
        unknown = sorted(set(given) - set(known))
        if unknown:
            allowed = ", ".join(known) or "none"
            raise InvalidParameter(
                unknown[0],
                f"strategy {self.name!r} has no parameter {unknown[0]!r} "
                f"(its parameters: {allowed})",
            )
        values = {
            name: spec.parse(given[name]) if name in given else spec.default
            for name, spec in known.items()
        }
        if self.check is not None:
            self.check(values)
        return values

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "source": self.source,
            "parameters": [p.describe() for p in self.parameters],
        }
