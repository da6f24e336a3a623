"""Forwarding one request to one worker: the plumbing under the ``single`` strategy.

``Upstream.open`` sends a body to the best worker of a pool and returns the live response, or
raises a domain error (``gateway.errors``): a worker that cannot be reached is taken out of
rotation, and a worker that answers 5xx counts against its circuit breaker, and either way the
request is retried on another worker (nothing reached the client yet, so this is safe); a worker
that goes silent is ``UpstreamTimeout`` (not retried: the work may be running), a worker 5xx or
a malformed answer ``UpstreamFailed``, a worker 4xx ``UpstreamRejected`` with its message.

``Upstream.complete`` and ``Upstream.stream`` answer a client from that response. Streams are
relayed chunk by chunk; when the relay stops early (client gone, deadline) the upstream
response is closed, which makes vLLM and llama.cpp abort the generation, and the adapter's
``abort`` (SGLang's ``/abort_request``) is called too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    RateLimited,
    UpstreamRejected,
    bad_gateway,
    gateway_timeout,
)
from gateway.metering.meter import Meter, ModelPrice, RequestMeter
from gateway.metrics import GatewayMetrics
from gateway.openai.chunks import (
    StreamTally,
    Usage,
    assemble_chat_completion,
    assemble_text_completion,
)
from gateway.openai.requests import prompt_token_bound
from gateway.openai.sse import DONE, encode_done, encode_event, iter_sse_data
from gateway.tasks import finish_even_if_cancelled, primed
from gateway.upstream.pool import Worker, WorkerLease, WorkerPool
from gateway.upstream.routing import RouteRequest

log = logging.getLogger("ttc.proxy")

JSON_HEADERS = {"Content-Type": "application/json"}
# A non-streamed call dropped sooner than this after sending met a stale connection (it fails on
# its first write or read) and is sent once more; later, the engine may have run it: not resent.
STALE_DROP_S = 0.25
PROMPT_COUNT_TIMEOUT_S = (
    0.5  # counting an aborted call's prompt (a tokenizer answers in ms): a hung
)
# worker must not hold the client's error much past its deadline; then the prompt is bounded


@dataclass
class RequestContext:
    """Per-request values passed down (never stored globally)."""

    request_id: str
    endpoint: str  # "chat" or "completions"
    strategy: str
    arrived: float = field(default_factory=time.perf_counter)
    deadline_s: float = 600.0
    upstream_s: float = 0.0  # time spent waiting on workers, for the overhead metric
    meter: RequestMeter | None = None  # cost and energy of the client request, all its calls
    role: str = "default"  # the pool role the calls serve (small, large, judge)
    # The client's own deadline (X-TTC-Deadline-Ms), when it is the one that binds.
    client_deadline_ms: int | None = None
    # The error an answer that had started (a stream sent with 200) ended with, as an error
    # event: the request is counted and logged with it.
    failure: GatewayError | None = None
    # X-TTC-Max-Cost-USD: the prompt's tokens as a worker counted them
    counted_prompt_tokens: int | None = None
    # The client's session key (X-TTC-Session, else the body's `user`): the `session` policy
    session: str | None = None
    # The workers that served the request's calls, by name, in order (X-TTC-Worker, ttc.worker)
    workers: list[str] = field(default_factory=list)
    # Calls cut before their answer (their prompt is billed once the request has stopped, so
    # counting it never keeps other calls running): (pool, worker, the call's context, body).
    cut_calls: list[tuple[WorkerPool, Worker, RequestContext, dict[str, Any]]] = field(
        default_factory=list
    )

    def remaining_s(self) -> float:
        return self.deadline_s - (time.perf_counter() - self.arrived)

    def limit_deadline(self, client_deadline_ms: int | None) -> None:
        """Apply the client's ``X-TTC-Deadline-Ms`` when it is sooner than the gateway's."""
        if client_deadline_ms is not None and client_deadline_ms / 1000 < self.deadline_s:
            self.deadline_s = client_deadline_ms / 1000
            self.client_deadline_ms = client_deadline_ms

    def deadline_error(self) -> GatewayError:
        """The client's answer when the request's deadline passed: it names the deadline that
        fired (the client's header, or the gateway's limit), never a worker."""
        if self.client_deadline_ms is not None:
            return DeadlineExceeded(
                f"the request's deadline (X-TTC-Deadline-Ms: {self.client_deadline_ms}) passed "
                "before the answer was complete",
                param="X-TTC-Deadline-Ms",
            )
        return DeadlineExceeded(
            f"the request ran past this gateway's limit of {self.deadline_s:g} s "
            "(limits.request_timeout_s)"
        )

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"


class Upstream:
    """Sends requests to workers and turns their answers into client answers."""

    def __init__(self, metrics: GatewayMetrics, meter: Meter | None = None) -> None:
        self.metrics = metrics
        self.meter = meter

    # -- sending ----------------------------------------------------------------------------
    async def open(
        self,
        pool: WorkerPool,
        ctx: RequestContext,
        body: dict[str, Any],
        prefer: Worker | None = None,
        route: RouteRequest | None = None,
    ) -> tuple[WorkerLease, aiohttp.ClientResponse]:
        """Send ``body`` to the worker the pool's routing policy picks (``prefer`` while it can
        take it); retry on another only if none was reached. ``route``: the body's routing
        view, when the caller already made it (``pool.plan``)."""
        tried: list[Worker] = []
        sequences = int(body.get("n") or 1)
        route = route or RouteRequest(body, ctx.session)
        resent = False
        while True:
            lease = pool.lease(exclude=tried, prefer=prefer, sequences=sequences, route=route)
            worker = lease.worker
            payload = pool.adapter.prepare(dict(body), pool.upstream_model, ctx.request_id)
            sent = time.perf_counter()
            try:
                async with asyncio.timeout(ctx.remaining_s()):
                    # Cancelled while waiting (even just as the answer arrived), aiohttp
                    # closes the connection itself.
                    response = await pool.session.post(
                        worker.url + ctx.path,
                        data=orjson.dumps(payload),
                        headers={**JSON_HEADERS, **pool.auth_headers},
                        timeout=pool.request_timeout,
                    )
            except aiohttp.ClientConnectorError as exc:
                lease.release()
                self.count_error(pool, worker, "connect")
                pool.mark_failed(worker, f"connection failed: {exc}")
                tried.append(worker)
                if len(tried) < len(pool.workers):
                    continue
                raise bad_gateway(
                    f"worker {worker.name} of pool {pool.name} is unreachable"
                ) from None
            except (
                aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError,
                ConnectionResetError,  # aiohttp's ClientConnectionResetError: a closed socket
            ) as exc:
                # Dropped before any answer: most often a kept-alive connection the engine had
                # just closed (llama.cpp's HTTP server also resets some under a burst of new
                # connections). A stream's headers come as soon as the engine takes the
                # request, so a streamed call dropped before them never ran: send it once
                # more, as HTTP clients do for a stale connection. A non-streamed call's
                # headers come only when it is done, so it is resent only if dropped at once
                # (a stale connection fails on its first write or read), not mid-generation.
                # A second drop is the worker's failure.
                lease.release()
                await asyncio.shield(pool.adapter.abort(pool.session, worker.url, ctx.request_id))
                at_once = time.perf_counter() - sent < STALE_DROP_S
                if resent or not (body.get("stream") or at_once):
                    raise self._translate(pool, worker, exc, ctx) from None
                resent = True
                self.metrics.upstream_errors.labels(pool.name, worker.name, "dropped").inc()
                continue
            except BaseException as exc:
                # The body may have reached the engine (cancelled or timed out while waiting
                # for its answer; a non-streamed answer's headers come only when it is done):
                # make sure it stops, and bill the prompt it prefilled.
                lease.release()
                await asyncio.shield(pool.adapter.abort(pool.session, worker.url, ctx.request_id))
                if cut_by_gateway(exc):  # its prompt was prefilled; it generated unseen
                    ctx.cut_calls.append((pool, worker, ctx, body))
                raise self._translate(pool, worker, exc, ctx) from None
            ctx.upstream_s += time.perf_counter() - sent
            if response.status >= 400:
                lease.release()
                error = await self._http_error(pool, worker, response)
                if response.status >= 500 and len(tried) + 1 < len(pool.workers):
                    tried.append(worker)  # nothing reached the client yet: try another worker
                    continue
                raise error
            if worker.name not in ctx.workers:
                ctx.workers.append(worker.name)
            return lease, response

    async def _http_error(
        self, pool: WorkerPool, worker: Worker, response: aiohttp.ClientResponse
    ) -> GatewayError:
        try:
            raw = await response.read()
        finally:
            response.release()
        message = _error_message(raw) or f"HTTP {response.status}"
        if response.status >= 500:
            self.count_error(pool, worker, "http_5xx")
            return bad_gateway(f"worker {worker.name} failed: {message}")
        self.count_error(pool, worker, "http_4xx")
        if response.status == 429:
            return RateLimited(
                f"worker is overloaded: {message}", code="upstream_overloaded", retry_after_s=1
            )
        return UpstreamRejected(message, worker_status=response.status)

    def _translate(
        self, pool: WorkerPool, worker: Worker, exc: BaseException, ctx: RequestContext
    ) -> BaseException:
        """Map a transport failure to the client's error; let cancellations through."""
        if isinstance(exc, GatewayError | asyncio.CancelledError):
            return exc
        if isinstance(exc, aiohttp.ServerTimeoutError):  # the worker went silent
            self.count_error(pool, worker, "timeout")
            return gateway_timeout(
                f"worker {worker.name} sent nothing for {pool.config.read_timeout_s:g} s "
                f"(pools[{pool.name}].read_timeout_s)"
            )
        if isinstance(exc, TimeoutError):  # the request's deadline
            return ctx.deadline_error()
        if isinstance(exc, aiohttp.ClientError | orjson.JSONDecodeError | ValueError):
            self.count_error(pool, worker, "protocol")
            return bad_gateway(
                f"worker {worker.name} broke the connection or the protocol: {type(exc).__name__}"
            )
        return exc

    async def abort(
        self,
        pool: WorkerPool,
        ctx: RequestContext,
        worker: Worker,
        response: aiohttp.ClientResponse,
    ) -> None:
        """Stop the worker's generation: close the connection (vLLM and llama.cpp abort on
        disconnect), then whatever else the engine needs (SGLang's ``/abort_request``)."""
        response.close()
        await asyncio.shield(pool.adapter.abort(pool.session, worker.url, ctx.request_id))

    def count_error(self, pool: WorkerPool, worker: Worker, kind: str) -> None:
        """A call failed: count it, and tell the worker's circuit breaker unless it was the
        client's fault (4xx)."""
        self.metrics.upstream_errors.labels(pool.name, worker.name, kind).inc()
        if kind != "http_4xx":
            pool.call_failed(worker, kind)

    # -- non-streaming ----------------------------------------------------------------------
    async def complete(
        self, pool: WorkerPool, ctx: RequestContext, body: dict[str, Any], n: int
    ) -> dict[str, Any]:
        """Forward a non-streaming request and return the completion object."""
        if pool.adapter.needs_streaming_for_usage(n) or ctx.client_deadline_ms is not None:
            # streamed upstream: every token is counted even if the deadline cuts it
            return await self._complete_via_stream(pool, ctx, body)
        lease, response = await self.open(pool, ctx, body)
        try:
            reading = time.perf_counter()
            async with asyncio.timeout(ctx.remaining_s()):
                raw = await response.read()
            ctx.upstream_s += time.perf_counter() - reading
            result = orjson.loads(raw)
            if not isinstance(result, dict) or "choices" not in result:
                raise ValueError("answer has no choices")
            pool.call_succeeded(lease.worker)
        except BaseException as exc:
            await self.abort(pool, ctx, lease.worker, response)
            if cut_by_gateway(exc):  # its prompt was prefilled; it generated unseen
                ctx.cut_calls.append((pool, lease.worker, ctx, body))
            raise self._translate(pool, lease.worker, exc, ctx) from None
        finally:
            response.release()
            lease.release()
        result["model"] = pool.model
        usage = result.get("usage") or {}
        self.count_tokens(
            pool,
            lease.worker,
            ctx,
            Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            ),
        )
        return result

    async def _complete_via_stream(
        self, pool: WorkerPool, ctx: RequestContext, body: dict[str, Any]
    ) -> dict[str, Any]:
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        tally = StreamTally(pool.adapter)
        lease, response = await self.open(pool, ctx, streamed)
        watch = self.watch(lease.worker, ctx, tally)
        broken = False
        try:
            async with asyncio.timeout(ctx.remaining_s()):
                await self._consume(response, tally)
            pool.call_succeeded(lease.worker)
        except BaseException as exc:
            broken = not cut_by_gateway(exc)
            await self.abort(pool, ctx, lease.worker, response)
            raise self._translate(pool, lease.worker, exc, ctx) from None
        finally:
            response.release()
            lease.release()
            await finish_even_if_cancelled(
                self.account_call(pool, lease.worker, ctx, tally, body, watch, estimate=not broken)
            )
        if ctx.endpoint == "chat":
            return assemble_chat_completion(tally, pool.model)
        return assemble_text_completion(tally, pool.model)

    # -- streaming --------------------------------------------------------------------------
    async def stream(
        self, pool: WorkerPool, ctx: RequestContext, body: dict[str, Any]
    ) -> AsyncGenerator[bytes, None]:
        """Open the upstream stream now (errors are still HTTP errors), relay it lazily."""
        client_options = body.get("stream_options") or {}
        wants_usage = bool(client_options.get("include_usage"))
        wants_continuous = bool(client_options.get("continuous_usage_stats"))
        upstream_body = {**body, "stream_options": {**client_options, "include_usage": True}}
        lease, response = await self.open(pool, ctx, upstream_body)
        return await primed(
            self._relay(pool, ctx, lease, response, upstream_body, wants_usage, wants_continuous)
        )

    async def _relay(
        self,
        pool: WorkerPool,
        ctx: RequestContext,
        lease: WorkerLease,
        response: aiohttp.ClientResponse,
        body: dict[str, Any],
        wants_usage: bool,
        wants_continuous: bool,
    ) -> AsyncGenerator[bytes, None]:
        tally = StreamTally(pool.adapter)
        worker = lease.worker
        watch = self.watch(worker, ctx, tally)
        ttft_recorded = False
        broken = False  # the worker failed: what it did is unknown, nothing is estimated
        try:
            yield b""  # primed (``gateway.tasks.primed``): the finally below always runs
            async with asyncio.timeout(ctx.remaining_s()):
                async for data in iter_sse_data(response.content.iter_any()):
                    if data == DONE:
                        tally.completed = True
                        break
                    chunk = orjson.loads(data)
                    if "error" in chunk:
                        log.warning(
                            "stream %s from %s ended with an error event: %s",
                            ctx.request_id,
                            worker.name,
                            _error_message(data),
                        )
                        ctx.failure = bad_gateway(f"worker {worker.name} sent an error event")
                        broken = True  # the worker failed: nothing of its work is estimated
                        self.count_error(pool, worker, "protocol")
                        yield encode_event(chunk)
                        yield encode_done()
                        return
                    tally.observe(chunk)
                    chunk["model"] = pool.model
                    if not chunk.get("choices") and "usage" in chunk:
                        continue  # the final usage chunk: sent below, corrected
                    if "usage" in chunk and not wants_continuous:
                        del chunk["usage"]
                    if tally.first_token_seen and not ttft_recorded:
                        ttft_recorded = True
                        self.metrics.time_to_first_token.labels(ctx.strategy, pool.model).observe(
                            time.perf_counter() - ctx.arrived
                        )
                    yield encode_event(chunk)
            if not tally.completed:
                raise aiohttp.ClientPayloadError("the worker ended the stream without [DONE]")
            pool.call_succeeded(worker)
            if wants_usage:
                yield encode_event(
                    {
                        "id": tally.id,
                        "object": "chat.completion.chunk"
                        if ctx.endpoint == "chat"
                        else "text_completion",
                        "created": tally.created,
                        "model": pool.model,
                        "choices": [],
                        "usage": tally.usage().as_openai(),
                    }
                )
            yield encode_done()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            broken = not cut_by_gateway(exc)
            error = self._translate(pool, worker, exc, ctx)
            if not isinstance(error, GatewayError):
                error = bad_gateway(str(error))
            if error.code != "deadline_exceeded":
                error.code = "stream_interrupted"
            log.warning("stream %s from %s broke: %s", ctx.request_id, worker.name, error.message)
            ctx.failure = error
            yield encode_event(error.body())
            yield encode_done()
        finally:
            if tally.completed:
                response.release()
            else:
                await self.abort(pool, ctx, worker, response)
            lease.release()
            await finish_even_if_cancelled(
                self.account_call(pool, worker, ctx, tally, body, watch, estimate=not broken)
            )

    async def _consume(self, response: aiohttp.ClientResponse, tally: StreamTally) -> None:
        async for data in iter_sse_data(response.content.iter_any()):
            if data == DONE:
                tally.completed = True
                return
            chunk = orjson.loads(data)
            if "error" in chunk:
                raise ValueError(_error_message(data) or "worker sent an error event")
            tally.observe(chunk)
        raise aiohttp.ClientPayloadError("stream ended without [DONE]")

    # -- accounting -------------------------------------------------------------------------
    async def bill_cut_calls(self, ctx: RequestContext) -> None:
        """Bill the prompts of the request's calls that were cut before their answer (counted
        by the workers' tokenizers, marked estimated). Called once the request has stopped."""
        cut, ctx.cut_calls[:] = list(ctx.cut_calls), []
        await asyncio.gather(
            *(
                self.account_call(pool, worker, call, StreamTally(pool.adapter), body)
                for pool, worker, call, body in cut
            )
        )

    async def account_call(
        self,
        pool: WorkerPool,
        worker: Worker,
        ctx: RequestContext,
        tally: StreamTally,
        body: dict[str, Any],
        watch: object | None = None,
        *,
        estimate: bool = True,
    ) -> None:
        """One upstream call has ended: count its tokens, its prompt too if the engine never
        said it (``estimate``: not for a call the worker broke, whose work is unknown)."""
        if estimate:
            await self._count_unreported_prompt(pool, worker, tally, body)
        self.count_tokens(pool, worker, ctx, tally.usage(), watch)

    def price_of(self, model: str) -> ModelPrice:
        """The price book's price of ``model`` (free when it has none)."""
        if self.meter is None:
            return ModelPrice()
        return self.meter.prices.models.get(model) or ModelPrice()

    async def count_prompt(
        self, pool: WorkerPool, ctx: RequestContext, body: dict[str, Any]
    ) -> int:
        """The prompt tokens of ``body`` before it is sent, by a worker's tokenizer, else the
        gateway's bound (``prompt_token_bound``)."""
        lease = pool.lease()
        try:
            timeout_s = min(PROMPT_COUNT_TIMEOUT_S, max(ctx.remaining_s(), 0.001))
            return await self._tokenize_or_bound(pool, lease.worker, body, timeout_s)
        finally:
            lease.release()

    async def _tokenize_or_bound(
        self, pool: WorkerPool, worker: Worker, body: dict[str, Any], timeout_s: float
    ) -> int:
        """``body``'s prompt tokens by ``worker``'s tokenizer; the gateway's bound
        (``prompt_token_bound``) when the engine cannot count them or the call fails."""
        try:
            count = await pool.adapter.count_prompt_tokens(
                pool.engine_call(worker, timeout_s), body
            )
        except GatewayError as exc:
            log.warning("cannot count a prompt's tokens, bounding them: %s", exc.message)
            count = None
        return count if count is not None else prompt_token_bound(body)

    async def _count_unreported_prompt(
        self, pool: WorkerPool, worker: Worker, tally: StreamTally, body: dict[str, Any]
    ) -> None:
        """A call that ended before its engine reported its prompt tokens (aborted, cut by a
        deadline or budget, the client gone) still made the engine prefill them: count them
        with the engine's own tokenizer, or, for an engine that cannot, bound them
        (``prompt_token_bound``). Either way ``Usage.estimated_prompt_tokens`` says so."""
        if tally.needs_prompt_count():
            tally.counted_prompt_tokens = await self._tokenize_or_bound(
                pool, worker, body, PROMPT_COUNT_TIMEOUT_S
            )

    def watch(self, worker: Worker, ctx: RequestContext, tally: StreamTally) -> object | None:
        """Let the meter follow a live stream's tokens (energy is split by token work)."""
        if self.meter is None or ctx.meter is None:
            return None
        return self.meter.watch(ctx.meter, worker, tally)

    def count_tokens(
        self,
        pool: WorkerPool,
        worker: Worker,
        ctx: RequestContext,
        usage: Usage,
        watch: object | None = None,
    ) -> None:
        """One upstream call ended: count its tokens, and price and meter it."""
        tokens, by_worker = self.metrics.tokens, self.metrics.worker_tokens
        labels = (ctx.strategy, pool.model, ctx.role)
        tokens.labels(*labels, "prompt").inc(usage.prompt_tokens)
        tokens.labels(*labels, "completion").inc(usage.completion_tokens)
        tokens.labels(*labels, "cached_prompt").inc(usage.cached_tokens or 0)
        tokens.labels(*labels, "estimated_prompt").inc(usage.estimated_prompt_tokens)
        by_worker.labels(pool.name, worker.name, "prompt").inc(usage.prompt_tokens)
        by_worker.labels(pool.name, worker.name, "completion").inc(usage.completion_tokens)
        if self.meter is not None and ctx.meter is not None:
            self.meter.settle(ctx.meter, worker, pool.model, usage, watch)


def cut_by_gateway(exc: BaseException) -> bool:
    """Whether a call ended because the gateway stopped it (deadline, cancellation: the engine
    was working on it) rather than because the worker failed."""
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return False
    return isinstance(exc, TimeoutError | asyncio.CancelledError | GeneratorExit)


def _error_message(raw: bytes) -> str | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return text[:500] or None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)[:500]
        if isinstance(error, str):
            return error[:500]
        if "detail" in data:
            return str(data["detail"])[:500]
    return None
