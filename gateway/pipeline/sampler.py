"""``PoolSampler``: the gateway's implementation of ``strategies.sampling.Sampler``.

Placement: the k samples of a batch go to ONE worker as one streaming request with ``n=k`` (the
engine prefills the prompt once and shares its KV blocks among the samples), split over several
workers only when load requires it: the workers declare ``max_sequences`` and the one with the
most free sequences cannot take all k (``WorkerPool.plan``); one request per sample only when
the pool's engine ignores ``n`` (``supports_n: false``) or the strategy must be able to stop
one sample's generation alone (``SampleRequest.separate``: DeepConf kills single traces). Each
upstream stream is read by its own task into one queue, so a strategy sees a single
merged stream of per-sample deltas. With a ``sticky_key`` every request of the batch goes to
the key's worker (its prefix cache holds the prompt), in requests of at most the workers'
``max_sequences`` samples (llama.cpp refuses an ``n`` above its slots).

Sticky placement: calls whose ``SampleRequest.sticky_key`` matches go to the worker of that pool
the key first reached, while it is healthy and has room, so each step of a step-wise strategy
hits that worker's prefix cache. ``render_chat`` asks a worker of a role's pool for the prompt
its chat template makes (``EngineAdapter.render_chat``).

Accounting: every stream keeps a ``StreamTally``; the request's usage is the sum over all of
them, aborted ones included. Budgets (``BudgetGuard``): the deadline is checked before every
delta given to the strategy, the token total and the cost cap by each stream's reader after
every chunk; when one runs out every stream is aborted and ``BudgetExhausted`` is raised.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from gateway.engines.base import EngineAdapter
from gateway.errors import DeadlineExceeded
from gateway.metering.meter import ModelPrice
from gateway.openai.chunks import ChoiceDelta, StreamTally, Usage, token_logprobs
from gateway.openai.sse import DONE, iter_sse_batches
from gateway.openai.thinking import ThinkingSplit
from gateway.tasks import finish_even_if_cancelled
from gateway.upstream.client import RequestContext, Upstream
from gateway.upstream.pool import PoolRegistry, Worker, WorkerLease, WorkerPool
from gateway.upstream.routing import RouteRequest
from strategies.sampling import (
    BudgetExhausted,
    BudgetName,
    RoleName,
    SampleDelta,
    SampleRequest,
    ThinkingBudget,
)

log = logging.getLogger("ttc.sampler")

# Fields of the client's body that the sampler sets itself.
_OWN_FIELDS = frozenset({"model", "messages", "prompt", "n", "stream", "stream_options", "ttc"})
# Chat fields a raw-prompt continuation does not take (``logprobs`` is mapped, not dropped).
_CHAT_ONLY_FIELDS = frozenset(
    {
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
        "max_completion_tokens",
        "top_logprobs",
        "logprobs",
    }
)


@dataclass
class BudgetGuard:
    """The request's deadline (perf_counter time), token total and cost cap (USD at the price
    book's prices), shared by its batches. The token total and the cost cap are checked on
    what the engines have sent (what is billed), after every chunk, by each stream's reader:
    one that reaches a budget reads no further, so a request is billed at most one chunk per
    stream past it."""

    deadline: float
    max_tokens_total: int | None = None
    max_cost_usd: float | None = None
    # The client's prompt as a worker counted it: the prompt of a stream whose engine has not
    # said it yet (vLLM says it with the first token, SGLang only at the end).
    prompt_tokens: int = 0
    # Every upstream stream of the request, for its tokens and their price.
    streams: list[_Stream] = field(default_factory=list)

    @property
    def limited(self) -> bool:
        return self.max_tokens_total is not None or self.max_cost_usd is not None

    @property
    def tokens(self) -> int:
        """The tokens generated so far, over every stream of the request."""
        return sum(stream.tally.counted_completion_tokens for stream in self.streams)

    def remaining_s(self) -> float:
        return self.deadline - time.perf_counter()

    def exhausted(self) -> BudgetName | None:
        """The budget that has run out ("tokens", "cost"), or None."""
        if self.max_tokens_total is not None and self.tokens >= self.max_tokens_total:
            return "tokens"
        if self.max_cost_usd is not None:
            spent = 0.0
            for stream in self.streams:
                usage = stream.tally.usage()
                if not usage.prompt_tokens:
                    usage = Usage(self.prompt_tokens, usage.completion_tokens)
                spent += stream.price.cost(usage)
            if spent >= self.max_cost_usd:
                return "cost"
        return None


@dataclass
class _Stream:
    """One upstream streaming request carrying samples ``offset .. offset+count-1``."""

    pool: WorkerPool
    ctx: RequestContext
    lease: WorkerLease
    response: aiohttp.ClientResponse
    offset: int
    count: int
    tally: StreamTally
    body: dict[str, Any]  # what was sent (its prompt is counted if the engine never said)
    watch: object | None = None  # the meter's handle on this stream
    price: ModelPrice = field(default_factory=ModelPrice)  # its model's, for the cost cap
    reader: asyncio.Task[None] | None = None
    closed: bool = False
    accounted: bool = False  # its tokens are counted (once, however it was closed)
    broken: bool = False  # the worker failed it (nothing of its work is estimated)
    # Samples whose first call this stream ended at the thinking budget (or whose model ended
    # it while still thinking): another stream continues them.
    handed_off: set[int] = field(default_factory=set)
    continuation: bool = False  # it continues its one sample after its thinking was ended


@dataclass
class ThinkingPlan:
    """A batch's thinking budget, enforced by the gateway: each sample's first call generates
    at most ``budget.tokens``; one that stops there (``length``), or that the model ends while
    still thinking (end of sequence, no answer yet), is continued once on the same worker by a
    raw completion of the chat rendered by the engine's template, what the sample generated,
    and the end-of-thinking delimiter if it was still thinking, with at most
    ``continue_tokens`` (0: it is not continued: the client's ``max_tokens`` was reached)."""

    budget: ThinkingBudget
    messages: list[dict[str, Any]]
    role: RoleName | None
    end_of_thinking: str
    continue_tokens: int
    native: bool = False  # the engine enforces the budget itself: nothing to continue
    rendered: asyncio.Future[str] | None = None  # the chat, rendered once for the batch


_END = object()
# How long a stream whose samples have all finished may take to send its usage and [DONE]
# before it is aborted (the engine's count of its last tokens comes with them).
END_GRACE_S = 0.5
_BUDGET_REACHED = object()  # a reader stopped at a budget: the strategy is told after its deltas


@dataclass
class UpstreamBatch:
    """k running samples; see ``strategies.sampling.SampleBatch``."""

    k: int
    streams: list[_Stream]
    guard: BudgetGuard
    upstream: Upstream
    finished: set[int] = field(default_factory=set)
    cancelled: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    # Per network read: the list of its deltas; (_END, stream) when a stream's reader stops.
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    # Deltas taken from the queue and not yet given to the strategy (kept if it stops
    # reading ``events`` halfway through a read).
    backlog: deque[SampleDelta] = field(default_factory=deque)
    # Each sample's thinking and answer, over all its calls.
    splits: list[ThinkingSplit] = field(default_factory=list)
    thinking: ThinkingPlan | None = None
    sampler: PoolSampler | None = None  # opens continuations (None: a batch never continued)
    continuing: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    stopping: bool = False  # the batch is being closed: no continuation is opened any more

    def __post_init__(self) -> None:
        if not self.splits:
            self.splits = [ThinkingSplit() for _ in range(self.k)]
        self.guard.streams += self.streams
        for stream in self.streams:
            stream.reader = asyncio.create_task(self._read(stream))

    async def _read(self, stream: _Stream) -> None:
        """Parse the stream a network read at a time; queue the deltas of each read as one
        list (one queue item and one wake-up of ``events`` per read, not per token). With a
        token total or cost cap, check it after every chunk: at the chunk that reaches it,
        queue what came so far and the budget, and read no further (this task is cancelled
        when the strategy stops)."""
        tally = stream.tally
        offset = stream.offset
        adapter = stream.pool.adapter
        splits = self.splits
        queue = self.queue
        guard = self.guard
        limited = guard.limited
        reached: BudgetName | None = None
        try:
            async for payloads in iter_sse_batches(stream.response.content.iter_any()):
                deltas: list[SampleDelta] = []
                try:
                    for data in payloads:
                        if data == DONE:
                            tally.completed = True
                            return
                        chunk = orjson.loads(data)
                        if "error" in chunk:
                            self.upstream.count_error(stream.pool, stream.lease.worker, "protocol")
                            stream.broken = True
                            return
                        for delta in tally.observe(chunk):
                            sample = offset + delta.choice_index
                            deltas.append(_sample_delta(sample, delta, adapter, splits[sample]))
                        if limited and (reached := guard.exhausted()) is not None:
                            break
                finally:  # what came before the end, an error event or a malformed chunk
                    if deltas:
                        queue.put_nowait(deltas)
                if reached is not None:
                    queue.put_nowait((_BUDGET_REACHED, reached))
                    await asyncio.Future()  # read no further: cancelled with the batch
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # reported to the strategy as failed samples (below)
            kind = "timeout" if isinstance(exc, TimeoutError) else "protocol"
            self.upstream.count_error(stream.pool, stream.lease.worker, kind)
            stream.broken = True
        finally:
            queue.put_nowait((_END, stream))

    async def events(self) -> AsyncGenerator[SampleDelta, None]:
        open_streams = len(self.streams)
        guard = self.guard
        queue, backlog = self.queue, self.backlog
        finished, cancelled = self.finished, self.cancelled
        loop = asyncio.get_running_loop()
        while open_streams or backlog:
            if backlog:
                item = backlog
            elif queue.empty():
                # One timer per wait (a wait is per network read, not per token), no task.
                try:
                    async with asyncio.timeout_at(loop.time() + guard.remaining_s()):
                        item = await queue.get()
                except TimeoutError:
                    await self.cancel()
                    raise BudgetExhausted("deadline") from None
            else:
                item = queue.get_nowait()
            if isinstance(item, tuple) and item[0] is _BUDGET_REACHED:
                await self.cancel()  # a reader reached the token total or the cost cap
                raise BudgetExhausted(item[1])
            if isinstance(item, tuple):  # (_END, stream or None: a continuation not opened)
                if guard.deadline <= time.perf_counter():
                    await self.cancel()
                    raise BudgetExhausted("deadline")
                open_streams -= 1
                if item[1] is None:
                    continue
                for failed in self._unfinished(item[1]):
                    self.finished.add(failed)
                    self.failed.add(failed)
                    yield SampleDelta(failed, "", 0, finish_reason="error")
                continue
            if item is not backlog:
                backlog.extend(item)
            while backlog:
                delta = backlog.popleft()
                # The deadline is checked at every delta (the token total and the cost cap at
                # every chunk, by the readers).
                if guard.deadline <= time.perf_counter():
                    await self.cancel()
                    raise BudgetExhausted("deadline")
                if delta.sample in cancelled:
                    continue
                if delta.finish_reason in ("length", "stop") and self._continue(delta):
                    open_streams += 1  # its continuation's stream
                    if delta.text or delta.reasoning or delta.tokens:
                        yield _unfinished_copy(delta)
                    continue
                if delta.finish_reason is not None:
                    finished.add(delta.sample)
                yield delta

    def _all_done(self, stream: _Stream) -> bool:
        """Every sample of the stream finished (none cancelled before it did)."""
        samples = range(stream.offset, stream.offset + stream.count)
        return all(
            (s in self.finished and s not in self.failed) or s in stream.handed_off for s in samples
        )

    def _unfinished(self, stream: _Stream) -> list[int]:
        if stream.closed:
            return []
        samples = range(stream.offset, stream.offset + stream.count)
        return [
            s
            for s in samples
            if s not in self.finished and s not in self.cancelled and s not in stream.handed_off
        ]

    # -- thinking budgets ---------------------------------------------------------------------
    def _continue(self, end: SampleDelta) -> bool:
        """If the sample's first call stopped at the thinking budget (``length``), or the
        model ended it while still thinking (end of sequence before the end of thinking: its
        answer would be empty), continue it (on its worker, in a task that feeds this batch's
        queue) and say so."""
        plan, sample = self.thinking, end.sample
        if plan is None or plan.native or plan.continue_tokens <= 0:
            return False
        if sample in self.continuing or self.sampler is None or self.stopping:
            return False  # a continuation that stops at `length` has reached the answer budget
        split = self.splits[sample]
        if end.finish_reason == "stop" and not (split.thinking_open and end.eos is not False):
            return False  # it answered, or a stop string of the client's ended it
        origin = next(s for s in self.streams if s.offset <= sample < s.offset + s.count)
        origin.handed_off.add(sample)
        split.cut = end.finish_reason == "length" and (split.thinking_open or split.undecided)
        self.continuing[sample] = asyncio.create_task(
            self._run_continuation(sample, origin, self.sampler, plan)
        )
        return True

    async def _run_continuation(
        self, sample: int, origin: _Stream, sampler: PoolSampler, plan: ThinkingPlan
    ) -> None:
        """Open the sample's continuation and read it into the queue; if it cannot be opened,
        the sample has failed. Whatever happens, the queue gets the end of one stream (the
        ``events`` loop counted this one in), and nothing is opened for a sample cancelled
        meanwhile or a batch being stopped (``close``)."""
        reading = False
        try:
            # The origin's request ends first: llama.cpp frees the slot holding the sample's
            # cache only then (a continuation sent earlier goes to another slot, uncached).
            if origin.reader is not None:
                await asyncio.wait({origin.reader})
            if origin.tally.completed:  # its worker slot is free again: give it back now
                await finish_even_if_cancelled(self._stop_then_account([origin]))
            split = self.splits[sample]
            if split.cut and not split.answer:
                # the whole first call was thinking: its tokens as the engine counted them
                # (one streamed chunk may carry two tokens)
                billed = origin.tally.choice(sample - origin.offset).billed_tokens
                split.thinking_tokens = max(split.thinking_tokens, billed)
            if self._abandoned(sample):
                return
            prompt = split.prompt_after(await sampler.rendered(plan), plan.end_of_thinking)
            split.continue_answer()
            if self._abandoned(sample):
                return
            stream = await sampler.open_continuation(origin, sample, prompt, plan.continue_tokens)
            self.streams.append(stream)
            self.guard.streams.append(stream)
            if self._abandoned(sample):  # cancelled while it was being opened
                await finish_even_if_cancelled(self._stop_then_account([stream]))
                return
            stream.reader = asyncio.current_task()
            reading = True
            await self._read(stream)  # it queues the stream's end itself
        except Exception as exc:  # the worker or the deadline: reported as a failed sample
            log.warning("continuation of sample %d failed to start: %s", sample, exc)
            self.finished.add(sample)
            self.failed.add(sample)
            self.queue.put_nowait([SampleDelta(sample, "", 0, finish_reason="error")])
        finally:
            if not reading:
                self.queue.put_nowait((_END, None))

    def _abandoned(self, sample: int) -> bool:
        return self.stopping or sample in self.cancelled

    async def cancel(self, samples: Iterable[int] | None = None) -> None:
        """Stop samples; a stream closes (aborting the engine's work) once none of its
        samples is still wanted. Tokens already received stay counted. (A continuation being
        opened sees its sample cancelled and stops itself.)"""
        targets = set(range(self.k)) if samples is None else set(samples)
        self.cancelled |= targets - self.finished
        done = [stream for stream in self.streams if not self._unfinished(stream)]
        await finish_even_if_cancelled(self._stop_then_account(done))

    async def _stop_then_account(self, streams: list[_Stream]) -> None:
        for stream in streams:
            await self._stop(stream)
        await self.account(streams)

    async def _stop(self, stream: _Stream) -> None:
        """Close one stream (the engine aborts it) and give its worker slot back."""
        if stream.closed:
            return
        stream.closed = True
        try:
            reader = stream.reader
            if reader is not None and not reader.done() and self._all_done(stream):
                # every sample of it has finished (or was handed to a continuation): its
                # usage and [DONE] are on their way; an abort now would lose the engine's count
                await asyncio.wait({reader}, timeout=END_GRACE_S)
            if reader is not None and not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            if stream.tally.completed:
                stream.response.release()
                stream.pool.call_succeeded(stream.lease.worker)
            else:
                await self.upstream.abort(
                    stream.pool, stream.ctx, stream.lease.worker, stream.response
                )
        finally:
            stream.lease.release()

    async def _account(self, stream: _Stream) -> None:
        """Count a closed stream's tokens (its prompt too, if the engine never said it), once."""
        if stream.accounted:
            return
        stream.accounted = True
        await self.upstream.account_call(
            stream.pool,
            stream.lease.worker,
            stream.ctx,
            stream.tally,
            stream.body,
            stream.watch,
            estimate=not stream.broken,
        )

    async def stop(self) -> None:
        """Close every stream still open, continuations being opened first (they stop)."""
        self.stopping = True
        reading = {stream.reader for stream in self.streams}
        opening = [t for t in self.continuing.values() if not t.done() and t not in reading]
        for task in opening:
            task.cancel()
        await asyncio.gather(*opening, return_exceptions=True)
        for stream in list(self.streams):
            await self._stop(stream)

    async def account(self, streams: list[_Stream] | None = None) -> None:
        """Count every closed stream not counted yet (``streams``: these only)."""
        chosen = self.streams if streams is None else streams
        await asyncio.gather(*(self._account(s) for s in chosen if s.closed))

    def sample_tokens(self) -> list[int]:
        """Each sample's completion tokens, over all its calls (a continued one has two)."""
        tokens = [0] * self.k
        for stream in self.streams:
            if stream.count == 1:  # its usage is the sample's (the engine's count, if higher)
                tokens[stream.offset] += stream.tally.usage().completion_tokens
                continue
            for i in range(stream.count):
                tokens[stream.offset + i] += stream.tally.choice(i).billed_tokens
        return tokens

    def samples_aborted(self) -> int:
        return len(self.cancelled - self.finished)


class PoolSampler:
    """Starts batches for one client request and keeps their accounts."""

    def __init__(
        self,
        pools: PoolRegistry,
        upstream: Upstream,
        ctx: RequestContext,
        model: str,
        guard: BudgetGuard,
    ) -> None:
        self.pools = pools
        self.upstream = upstream
        self.ctx = ctx
        self.model = model
        self.guard = guard
        self.batches: list[UpstreamBatch] = []
        self._requests = 0
        self._sticky: dict[tuple[str, str], Worker] = {}  # (pool, sticky_key) -> worker
        # Who ended thinking at the budget in this request's batches: "gateway", "engine".
        self.budget_enforcers: set[str] = set()

    def _pool(self, role: RoleName | None) -> WorkerPool:
        if role is None:
            return self.pools.for_model(self.model)
        return self.pools.for_role(role, self.model)

    async def render_chat(
        self, messages: list[dict[str, Any]], role: RoleName | None = None
    ) -> str:
        pool = self._pool(role)
        lease = pool.lease()
        try:
            call = pool.engine_call(lease.worker, self.guard.remaining_s())
            return await pool.adapter.render_chat(call, messages)
        finally:
            lease.release()

    async def start(
        self,
        request: SampleRequest,
        k: int,
        role: RoleName | None = None,
    ) -> UpstreamBatch:
        pool = self._pool(role)
        sticky = (pool.name, request.sticky_key) if request.sticky_key is not None else None
        body = {k_: v for k_, v in request.params.items() if k_ not in _OWN_FIELDS}
        endpoint = "chat"
        if request.prompt is not None:
            body["prompt"] = request.prompt
            endpoint = "completions"
        else:
            body["messages"] = request.messages
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        plan = self._thinking_plan(pool, request, role, body)
        # A raw prompt's text is the strategy's own to read (step-wise strategies): no split.
        splits = [_split_for(pool, request.prompt is None) for _ in range(k)]
        if plan is not None and plan.budget.tokens == 0 and not plan.native:
            # No thinking at all: every sample starts where a cut one continues.
            for split in splits:
                split.cut = True
            prompt = splits[0].prompt_after(await self.rendered(plan), plan.end_of_thinking)
            for split in splits:
                split.continue_answer()
            body = _continuation_body(body, prompt, plan.continue_tokens)
            endpoint, plan = "completions", None
        route = RouteRequest(body, self.ctx.session)  # the same prompt for every part
        parts: list[tuple[Worker | None, int]]
        # Under a thinking budget the gateway continues, each sample is its own request: its
        # continuation then finds the sample's whole prefix cached on its engine slot (llama.cpp
        # keeps the choices of one n>1 request in slots a later request does not match).
        continued = plan is not None and not plan.native and plan.continue_tokens > 0
        separately = request.separate or not pool.config.supports_n or continued
        if separately:
            parts = [(None, 1)] * k  # separate: each on the first one's worker while it has room
        elif sticky is not None:  # the sticky worker's prefix cache matters more
            cap = _samples_per_request(pool)
            parts = [(None, min(cap, k - done)) for done in range(0, k, cap)]
        else:  # the policy's worker when it has room for all k; split if not
            parts = pool.plan(k, route)
        streams: list[_Stream] = []
        try:
            offset = 0
            for planned, size in parts:
                prefer = self._sticky.get(sticky) if sticky else planned
                if request.separate and streams and prefer is None:
                    # its cache holds the prompt now (an engine without `n` keeps spreading
                    # its samples over the pool, for parallelism)
                    prefer = streams[0].lease.worker
                stream = await self._open(
                    pool, endpoint, role or "default", body, offset, size, prefer, route
                )
                if sticky is not None:
                    self._sticky[sticky] = stream.lease.worker
                streams.append(stream)
                offset += size
        except BaseException as exc:
            if (
                isinstance(exc, DeadlineExceeded)
                and self.batches
                and (request.separate or sticky is not None)
            ):
                # A later wave (deepconf, adaptive_consistency) met the deadline while waiting
                # for a worker's answer: what it opened is kept (stopped and billed at close)
                # and the strategy answers with what it has, as when the deadline passes
                # mid-stream. Nothing sampled yet, or another strategy: the 504 it was.
                if streams:
                    self.batches.append(UpstreamBatch(offset, streams, self.guard, self.upstream))
                raise BudgetExhausted("deadline") from None
            for stream in streams:
                stream.response.close()
                stream.lease.release()
            raise
        batch = UpstreamBatch(
            k, streams, self.guard, self.upstream, splits=splits, thinking=plan, sampler=self
        )
        self.batches.append(batch)
        return batch

    # -- thinking budgets ---------------------------------------------------------------------
    def _thinking_plan(
        self,
        pool: WorkerPool,
        request: SampleRequest,
        role: RoleName | None,
        body: dict[str, Any],
    ) -> ThinkingPlan | None:
        """Apply a chat request's thinking budget to the body of its first calls: the engine's
        own control where the pool has one, else ``max_tokens`` at the budget (the gateway
        continues what stops there, ``ThinkingPlan``)."""
        budget = request.thinking
        if budget is None or request.messages is None:
            return None
        reasoning = pool.config.reasoning
        field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        client_max = body.get(field)
        cap = client_max if isinstance(client_max, int) and client_max > 0 else None
        plan = ThinkingPlan(
            budget, request.messages, role, reasoning.end_of_thinking, continue_tokens=0
        )
        self.budget_enforcers.add("engine" if reasoning.native_budget else "gateway")
        if reasoning.native_budget:
            pool.adapter.limit_thinking(body, budget.tokens)
            total = budget.tokens + budget.answer_tokens
            body[field] = min(total, cap) if cap is not None else total
            plan.native = True
            return plan
        if budget.tokens == 0:  # no thinking: the samples start with the answer (`start`)
            plan.continue_tokens = min(budget.answer_tokens, cap or budget.answer_tokens)
            return plan
        if cap is not None and cap <= budget.tokens:
            return None  # the client's max_tokens ends the sample first: nothing to cut
        body[field] = budget.tokens
        remaining = budget.answer_tokens if cap is None else cap - budget.tokens
        plan.continue_tokens = min(budget.answer_tokens, remaining)
        return plan

    async def rendered(self, plan: ThinkingPlan) -> str:
        """The batch's chat as its pool's engine renders it, asked once."""
        if plan.rendered is None:
            plan.rendered = asyncio.ensure_future(self.render_chat(plan.messages, plan.role))
        return await asyncio.shield(plan.rendered)

    async def open_continuation(
        self, origin: _Stream, sample: int, prompt: str, max_tokens: int
    ) -> _Stream:
        """Continue one sample of ``origin`` with a raw completion of ``prompt`` on the same
        worker (its prefix cache holds the chat and the thinking)."""
        body = _continuation_body(origin.body, prompt, max_tokens)
        stream = await self._open(
            origin.pool, "completions", origin.ctx.role, body, sample, 1, origin.lease.worker
        )
        stream.continuation = True
        return stream

    async def _open(
        self,
        pool: WorkerPool,
        endpoint: str,
        role: str,
        body: dict[str, Any],
        offset: int,
        size: int,
        prefer: Worker | None,
        route: RouteRequest | None = None,
    ) -> _Stream:
        """One upstream streaming request carrying samples ``offset .. offset+size-1``: its
        own request id, billed and reported with the client's request."""
        self._requests += 1
        ctx = RequestContext(
            request_id=f"{self.ctx.request_id}-{self._requests}",
            endpoint=endpoint,
            strategy=self.ctx.strategy,
            arrived=self.ctx.arrived,
            deadline_s=self.ctx.deadline_s,
            client_deadline_ms=self.ctx.client_deadline_ms,
            meter=self.ctx.meter,
            cut_calls=self.ctx.cut_calls,  # billed with the request's
            session=self.ctx.session,
            workers=self.ctx.workers,  # reported with the request's
            role=role,
        )
        lease, response = await self.upstream.open(
            pool, ctx, {**body, "n": size}, prefer=prefer, route=route
        )
        tally = StreamTally(pool.adapter)
        return _Stream(
            pool,
            ctx,
            lease,
            response,
            offset,
            size,
            tally,
            body,
            self.upstream.watch(lease.worker, ctx, tally),
            self.upstream.price_of(pool.model),
        )

    def thinking(self) -> list[dict[str, Any]]:
        """Every sample's thinking tokens, whether its thinking was cut at the budget, and
        whether it was continued (cut, or ended by the model while still thinking)."""
        reported = []
        for batch in self.batches:
            plan = batch.thinking
            # the engine's own budget (vLLM): a sample that thought to the budget was cut there
            native = plan.budget.tokens if plan is not None and plan.native else None
            continued = {stream.offset for stream in batch.streams if stream.continuation}
            for sample, split in enumerate(batch.splits):
                if split.chat:
                    cut = split.cut or (native is not None and split.thinking_tokens >= native)
                    reported.append(
                        {
                            "thinking_tokens": split.thinking_tokens,
                            "cut": cut,
                            "continued": sample in continued,  # a second call was sent
                        }
                    )
        return reported

    async def close(self) -> None:
        """Abort whatever is still running (the strategy returned or was cancelled): every
        stream first, then the bookkeeping, which may ask a worker to count a prompt (no
        stream keeps generating while another's prompt is counted)."""
        for batch in self.batches:
            await batch.stop()
        await asyncio.gather(*(batch.account() for batch in self.batches))

    def usage(self) -> Usage:
        usage = sum(
            (stream.tally.usage() for batch in self.batches for stream in batch.streams), Usage()
        )
        thought = [split for batch in self.batches for split in batch.splits]
        if any(split.thinking_tokens for split in thought):
            usage.reasoning_tokens = sum(split.thinking_tokens for split in thought)
        return usage

    def placement(self) -> list[dict[str, Any]]:
        """Each upstream request: its worker, how many samples it carried, its tokens (prompt,
        cached, generated), and, for a continuation (of a thinking cut at its budget, or ended
        unclosed), the sample it continued (``continues``: its index in the batch)."""
        placed = []
        for batch in self.batches:
            for stream in batch.streams:
                usage = stream.tally.usage()
                call = {
                    "worker": stream.lease.worker.name,
                    "samples": stream.count,
                    "prompt_tokens": usage.prompt_tokens,
                    "cached_tokens": usage.cached_tokens,
                    "completion_tokens": usage.completion_tokens,
                }
                if stream.continuation:
                    call["continues"] = stream.offset
                placed.append(call)
        return placed

    def sample_counts(self) -> dict[str, int]:
        launched = sum(b.k for b in self.batches)
        aborted = sum(b.samples_aborted() for b in self.batches)
        failed = sum(len(b.failed) for b in self.batches)
        return {
            "launched": launched,
            "finished": launched - aborted - failed,
            "aborted": aborted,
            "failed": failed,
        }

    def tokens_saved_by_early_stop(self, cap: int | None) -> int:
        """An estimate of the tokens the aborted samples would still have generated: per
        aborted sample, the mean length of the finished ones (capped at ``cap``) minus what it
        had produced. Conservative: samples still running when others finished tend to be
        the longer ones."""
        finished: list[int] = []
        aborted: list[int] = []
        for batch in self.batches:
            for sample, tokens in enumerate(batch.sample_tokens()):
                if sample in batch.cancelled and sample not in batch.finished:
                    aborted.append(tokens)
                elif sample in batch.finished and sample not in batch.failed:
                    finished.append(tokens)
        if not finished or not aborted:
            return 0
        expected = sum(finished) / len(finished)
        if cap is not None:
            expected = min(expected, cap)
        return round(sum(max(0.0, expected - t) for t in aborted))

    def sample_tokens(self) -> list[int]:
        """Completion tokens of every sample of every batch, in launch order."""
        return [tokens for batch in self.batches for tokens in batch.sample_tokens()]


def _split_for(pool: WorkerPool, chat: bool) -> ThinkingSplit:
    reasoning = pool.config.reasoning
    mode = reasoning.thinking if chat else "none"
    return ThinkingSplit(mode, reasoning.open_tag, reasoning.close_tag, chat=chat)


def _continuation_body(body: dict[str, Any], prompt: str, max_tokens: int) -> dict[str, Any]:
    """A raw completion's body with the chat body's sampling parameters (log-probs as the
    completions API asks for them)."""
    out = {k: v for k, v in body.items() if k not in _CHAT_ONLY_FIELDS}
    if body.get("logprobs"):
        out["logprobs"] = int(body.get("top_logprobs") or 1)
    out.update(prompt=prompt, max_tokens=max_tokens)
    return out


def _unfinished_copy(delta: SampleDelta) -> SampleDelta:
    """``delta`` without its finish: the sample goes on in another call."""
    made = _new_object(SampleDelta)
    made.__dict__.update(delta.__dict__, finish_reason=None, eos=None)
    return made


def _samples_per_request(pool: WorkerPool) -> int:
    """The most samples one request to any worker of the pool may carry: the smallest
    ``max_sequences`` its workers declare (llama.cpp answers 400 to an ``n`` above its
    ``--parallel``); unbounded when a worker declares none."""
    declared = [w.config.max_sequences for w in pool.workers]
    if not declared or any(cap is None for cap in declared):
        return sys.maxsize
    return min(cap for cap in declared if cap is not None)


_new_object = object.__new__
_NO_LOGPROBS: tuple[tuple[float, ...], tuple[dict[str, float], ...]] = ((), ())


def _sample_delta(
    sample: int, delta: ChoiceDelta, adapter: EngineAdapter, split: ThinkingSplit
) -> SampleDelta:
    """The strategies' ``SampleDelta`` of one choice's delta (its text split into answer and
    thinking by the sample's ``split``), made as its ``__init__`` would make it (the same
    fields, ``tests/unit/test_sampler_relay.py`` holds it to that) at a third of the cost: a
    frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, and one is
    made per streamed token."""
    raw = delta.raw
    logprobs = raw.get("logprobs")
    values, tops = token_logprobs(logprobs) if logprobs else _NO_LOGPROBS
    finish = delta.finish_reason
    chat = raw.get("delta")
    thought = (chat.get("reasoning_content") or chat.get("reasoning") or "") if chat else ""
    text, reasoning = split.feed(delta.text, thought, delta.tokens)
    if finish is not None:
        held_text, held_reasoning = split.flush()
        text, reasoning = text + held_text, reasoning + held_reasoning
    made = _new_object(SampleDelta)
    made.__dict__.update(
        sample=sample,
        text=text,
        tokens=delta.tokens,
        logprobs=values,
        top_logprobs=tops,
        finish_reason=finish,
        eos=adapter.ended_at_eos(raw) if finish == "stop" else None,
        reasoning=reasoning,
    )
    return made
