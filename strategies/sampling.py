"""The seam between strategies and the gateway: what a strategy may ask of the worker pools.

A strategy never sees HTTP, workers or engines. It asks a ``Sampler`` to start ``k`` samples of a
prompt on a role's pool and reads one merged stream of ``SampleDelta`` events from the returned
``SampleBatch``; it cancels one sample or all of them the moment its decision is made. The gateway
decides placement (one request with ``n=k`` on one worker where possible, so the engine prefills
the prompt once; separate requests, on one worker, where a sample must be cancelled alone:
``SampleRequest.separate``), counts every
token of every sample, aborted ones included, and attaches that usage to the response.

This keeps each strategy testable without HTTP: a scripted sampler is all a unit test needs.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

RoleName = Literal["small", "large", "judge"]
ROLES: tuple[RoleName, ...] = get_args(RoleName)


BudgetName = Literal["deadline", "tokens", "cost"]


class BudgetExhausted(Exception):
    """The request's deadline, token total or cost cap ran out; every sample has been
    cancelled. Strategies catch it and answer with their best so far, marked as truncated."""

    def __init__(self, reason: BudgetName) -> None:
        super().__init__(f"budget exhausted: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class ThinkingBudget:
    """A sample thinks for at most ``tokens`` tokens; if it is still thinking then, its thinking
    is ended with the end-of-thinking delimiter and its answer is written in at most
    ``answer_tokens`` more (Elastic Reasoning's t and s, arXiv 2505.05315)."""

    tokens: int
    answer_tokens: int


@dataclass(frozen=True)
class SampleRequest:
    """What to sample: chat ``messages`` or a raw ``prompt`` the strategy rendered itself
    (step-wise strategies continue text where chat templates are unreliable), plus the
    client's sampling parameters (``temperature``, ``max_tokens``, ``stop``, ``logprobs``...)."""

    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    sticky_key: str | None = None  # keep every call with this key on the same worker
    # Each sample its own upstream request (on one worker, which caches the prompt's prefix),
    # so that cancelling one sample stops its generation at once: for strategies that kill
    # single traces (deepconf). Otherwise k samples share one request with n=k, and a cancelled
    # one keeps generating until every sample of its request is cancelled or finished.
    separate: bool = False
    # Cap each sample's thinking (reasoning models): the gateway ends it at the budget and
    # continues the answer (``ThinkingBudget``); None: the engine's own limits only.
    thinking: ThinkingBudget | None = None


@dataclass(frozen=True)
class SampleDelta:
    """New output of one sample. The last event of a sample has ``finish_reason`` set
    (``stop``, ``length``, or ``abort`` when the strategy or a deadline cancelled it).
    ``text`` is answer text only; a reasoning model's thinking arrives in ``reasoning``
    (``tokens`` counts both)."""

    sample: int
    text: str
    tokens: int
    logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[dict[str, float], ...] = ()
    finish_reason: str | None = None
    # With finish_reason "stop": True when the engine says the sample ended at its end-of-
    # sequence token, False when a stop string matched, None when the engine does not say.
    eos: bool | None = None
    reasoning: str = ""


class SampleBatch(Protocol):
    """k running samples of one prompt."""

    k: int

    def events(self) -> AsyncGenerator[SampleDelta, None]:
        """Every sample's deltas as they arrive, merged, until all samples have finished."""
        ...

    async def cancel(self, samples: Iterable[int] | None = None) -> None:
        """Stop the given samples (all when None); their tokens so far stay counted."""
        ...


class Sampler(Protocol):
    """Starts samples on the pool playing ``role`` (None: the pool of the requested model)."""

    async def start(
        self,
        request: SampleRequest,
        k: int,
        role: RoleName | None = None,
    ) -> SampleBatch:
        """Launch ``k`` samples."""
        ...

    async def render_chat(
        self, messages: list[dict[str, Any]], role: RoleName | None = None
    ) -> str:
        """The prompt text the engine of ``role``'s pool makes of ``messages`` with its chat
        template, generation prompt appended, for raw-prompt step continuation. Raises when
        that engine cannot render (the gateway answers with a clear error)."""
        ...


@dataclass
class SampleState:
    """Everything one sample has produced so far."""

    index: int
    pieces: list[str] = field(default_factory=list)  # the answer
    tokens: int = 0  # thinking and answer
    finish_reason: str | None = None
    logprobs: list[float] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The answer: what votes and answer extraction read (never the thinking)."""
        return "".join(self.pieces)

    @property
    def reasoning(self) -> str:
        return "".join(self.thinking)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def ended_naturally(self) -> bool:
        """Stopped by the model (EOS or a stop string), not by ``max_tokens`` or an abort."""
        return self.finish_reason == "stop"


class SampleBook:
    """Accumulates a batch's deltas per sample and remembers the order samples finished in."""

    def __init__(self, k: int) -> None:
        self.samples = [SampleState(i) for i in range(k)]
        self.finish_order: list[int] = []

    def record(self, delta: SampleDelta) -> SampleState | None:
        """Add one delta; return the sample if this delta finished it."""
        sample = self.samples[delta.sample]
        if delta.text:
            sample.pieces.append(delta.text)
        if delta.reasoning:
            sample.thinking.append(delta.reasoning)
        sample.tokens += delta.tokens
        sample.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None and sample.finish_reason is None:
            sample.finish_reason = delta.finish_reason
            self.finish_order.append(sample.index)
            return sample
        return None

    def first_finished(self) -> SampleState | None:
        return self.samples[self.finish_order[0]] if self.finish_order else None

    def longest(self) -> SampleState:
        return max(self.samples, key=lambda s: s.tokens)


class FinishedSamples:
    """The samples of one batch as they finish, in finish order: ``async for sample in ...``
    ends when every sample has finished, or when a budget ran out (``truncated``). ``book``
    holds everything produced so far; ``stop()`` cancels the samples still running."""

    def __init__(self, batch: SampleBatch, k: int) -> None:
        self.batch = batch
        self.book = SampleBook(k)
        self.truncated = False
        self.budget: BudgetName | None = None  # the budget that ran out, if one did
        self._events = batch.events()

    def __aiter__(self) -> FinishedSamples:
        return self

    async def __anext__(self) -> SampleState:
        try:
            async for delta in self._events:
                sample = self.book.record(delta)
                if sample is not None:
                    return sample
        except BudgetExhausted as exc:
            self.truncated = True
            self.budget = exc.reason
        raise StopAsyncIteration

    async def stop(self) -> None:
        """Cancel every sample still running (the decision is made)."""
        await self.batch.cancel()

    async def close(self) -> None:
        await self._events.aclose()


@asynccontextmanager
async def finish_order(
    sampler: Sampler, request: SampleRequest, k: int, role: RoleName | None = None
) -> AsyncIterator[FinishedSamples]:
    """Start ``k`` samples of ``request`` and follow them as they finish."""
    samples = FinishedSamples(await sampler.start(request, k, role), k)
    try:
        yield samples
    finally:
        await samples.close()
