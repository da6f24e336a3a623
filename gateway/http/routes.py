"""The HTTP surface: thin routes that validate, pick a strategy and a pool, and answer.

The work is done in plain classes (``PoolRegistry``, ``Upstream``); the routes only translate
between HTTP and them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.access.control import OPEN, AccessControl, Admission
from gateway.access.response_cache import CachedAnswer, ResponseCache
from gateway.config import GatewaySettings
from gateway.errors import GatewayError, RequestTooLarge, invalid_request, model_not_found
from gateway.http.errors import error_response, status_of
from gateway.http.streaming import ClientDisconnected, DisconnectAwareStream, cancel_on_disconnect
from gateway.metrics import GatewayMetrics
from gateway.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_request,
    prompt_token_bound,
)
from gateway.pipeline.road import Pipeline, Sampling
from gateway.pipeline.runner import worker_header
from gateway.tasks import finish_even_if_cancelled, primed
from gateway.upstream.client import RequestContext, Upstream
from gateway.upstream.pool import PoolRegistry
from strategies import (
    REGISTRY,
    InvalidParameter,
    UnknownStrategy,
    get_strategy,
    split_budgets,
)
from strategies.base import TokenBound

router = APIRouter()

STRATEGY_HEADER = "x-ttc-strategy"
SESSION_HEADER = "x-ttc-session"  # routing (the `session` policy), not a strategy parameter
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before its answer
PARAM_HEADER_PREFIX = "x-ttc-"


@dataclass
class GatewayState:
    """Everything a request handler needs, built once per app."""

    settings: GatewaySettings
    pools: PoolRegistry
    upstream: Upstream
    metrics: GatewayMetrics
    pipeline: Pipeline
    access: AccessControl
    cache: ResponseCache | None = None


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


async def read_json_body(request: Request, limit: int) -> Any:
    """The decoded body, or 413 when larger than ``limit`` bytes, or 400 when not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestTooLarge(f"request body is larger than {limit} bytes")
    if not body:
        raise invalid_request(
            "The request body is empty; expected a JSON object", code="invalid_json"
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from None


def check_depth(value: Any, limit: int) -> None:
    """400 when JSON objects and arrays nest deeper than ``limit``: the body is forwarded, and
    a worker's own JSON parser may recurse (Python's stops near 1,000 levels). Breadth-first,
    one list per level, so a deep body costs no recursion here either."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise invalid_request(
                f"The request body nests objects and arrays deeper than {limit} levels",
                code="json_too_deep",
            )
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]


@dataclass
class StrategyChoice:
    """The strategy a request asked for, its raw parameters, and where each came from (the
    header or body field to name in an error)."""

    name: str
    params: dict[str, Any]
    origins: dict[str, str]
    strategy_origin: str = "X-TTC-Strategy"


def header_name(param: str) -> str:
    """``max_cost_usd`` -> ``X-TTC-Max-Cost-USD``: the header a parameter is sent in."""
    words = param.split("_")
    return "X-TTC-" + "-".join("USD" if w == "usd" else w.capitalize() for w in words)


def select_strategy(
    headers: Headers, body_ttc: dict[str, Any] | None, default: str
) -> StrategyChoice:
    """Headers win over the body's ``ttc``, which wins over the configured default.
    ``X-TTC-Max-Tokens-Total`` becomes the parameter ``max_tokens_total``."""
    body_ttc = body_ttc or {}
    params = {k: v for k, v in body_ttc.items() if k != "strategy"}
    origins = {k: f"ttc.{k}" for k in params}
    name = body_ttc.get("strategy", default)
    strategy_origin = "ttc.strategy" if "strategy" in body_ttc else "X-TTC-Strategy"
    for key, value in headers.items():
        if key.startswith(PARAM_HEADER_PREFIX):
            if key == STRATEGY_HEADER:
                name = value
                strategy_origin = "X-TTC-Strategy"
            elif key != SESSION_HEADER:
                param = key[len(PARAM_HEADER_PREFIX) :].replace("-", "_")
                params[param] = value
                origins[param] = header_name(param)
    if not isinstance(name, str):
        raise invalid_request("ttc.strategy must be a string", param="ttc.strategy")
    return StrategyChoice(name, params, origins, strategy_origin)


def with_thinking(
    bound: TokenBound, samples: int, prompt_tokens: int, thinking_budget: int | None
) -> TokenBound:
    """A request's bound under a thinking budget: each sample may be continued once, with its
    prompt and its thinking sent again (its generated tokens stay within ``max_tokens``)."""
    if thinking_budget is None:
        return bound
    again = samples * (prompt_tokens + thinking_budget + 16)  # + the end-of-thinking delimiter
    return TokenBound(bound.prompt_tokens + again, bound.completion_tokens)


async def _sampling(request: Request, endpoint: str) -> Response:
    """One sampling request, from its body to its answer. Every request is counted exactly
    once in ``ttc_requests_total`` with the status it ended with: here for a plain answer or
    an error, when the stream ends for a stream (``_stream_response``)."""
    state = _state(request)
    ctx = RequestContext(
        request_id=request.scope["state"]["request_id"],
        endpoint=endpoint,
        strategy="-",
        deadline_s=state.settings.limits.request_timeout_s,
    )
    model = "-"
    admission = OPEN
    streaming = False  # a stream is counted and settled when it ends, not when this returns
    status = 200  # what the request ended with, for the count
    try:
        body = await read_json_body(request, state.settings.limits.max_body_bytes)
        check_depth(body, state.settings.limits.max_json_depth)
        parsed = parse_request(
            ChatCompletionRequest if endpoint == "chat" else CompletionRequest,
            body,
            state.settings.limits,
        )
        choice = select_strategy(request.headers, parsed.ttc, state.settings.default_strategy)
        user = body.get("user")
        ctx.session = request.headers.get(SESSION_HEADER) or (
            user if isinstance(user, str) and user else None
        )
        try:
            spec = get_strategy(choice.name)
            ctx.strategy = spec.name  # a refused parameter is counted under its strategy
            budgets, own_params = split_budgets(choice.params)
            params = spec.parse(own_params)
        except UnknownStrategy as exc:
            raise invalid_request(
                str(exc), param=choice.strategy_origin, code="unknown_strategy"
            ) from None
        except InvalidParameter as exc:
            raise invalid_request(
                str(exc), param=choice.origins.get(exc.param, exc.param)
            ) from None
        pool = state.pools.for_model(parsed.model)
        model = pool.model
        if state.upstream.meter is not None:
            ctx.meter = state.upstream.meter.request(model, spec.name)
        max_tokens = parsed.requested_max_tokens() or state.settings.limits.max_tokens
        admission = await state.access.admit(
            request.headers.get("authorization"),
            spec.name,
            int(params.get("k", parsed.n)),
            lambda: with_thinking(
                spec.bound(params, prompt_token_bound(body), max_tokens, parsed.n),
                int(params.get("k", parsed.n)),
                prompt_token_bound(body),
                budgets.thinking_budget
                if budgets.thinking_budget is not None
                else state.settings.thinking.effort_budgets.get(str(body.get("reasoning_effort"))),
            ),
        )
        forward = {k: v for k, v in body.items() if k != "ttc"}
        cache_key = None
        if state.cache is not None:
            cache_key = state.cache.key(
                endpoint=endpoint,
                model=model,
                strategy=spec.name,
                params=params,
                budgets=budgets,
                body=forward,
                key_id=admission.key_id,
            )
            cached = await state.cache.lookup(cache_key) if cache_key is not None else None
            if cached is not None:
                return Response(
                    cached.body,
                    media_type="application/json",
                    headers={**cached.headers, "X-TTC-Cache": "hit"},
                )
        sampling = Sampling(
            spec,
            params,
            budgets,
            forward,
            pool,
            parsed.n,
            choice.origins.get("thinking_budget", "X-TTC-Thinking-Budget"),
        )
        await state.pipeline.prepare(sampling, ctx)
        if parsed.stream:
            events = await state.pipeline.stream(sampling, ctx)
            streaming = True
            return await _stream_response(
                request,
                state,
                events,
                admission,
                ctx,
                model,
                endpoint,
                {"X-TTC-Strategy": spec.name, **worker_header(ctx)},
            )
        answer = await cancel_on_disconnect(request.receive, state.pipeline.answer(sampling, ctx))
        response = Response(
            orjson.dumps(answer.body), media_type="application/json", headers=answer.headers
        )
        if cache_key is not None:
            await _remember(state, cache_key, response)
        return response
    except GatewayError as exc:
        status = status_of(exc)
        raise
    except ClientDisconnected:
        status = CLIENT_CLOSED_REQUEST  # no response is sent
        state.metrics.client_disconnects.labels(model, endpoint).inc()
        return Response(status_code=status)
    except BaseException:
        status = 500
        raise
    finally:
        if not streaming:
            try:
                await finish_even_if_cancelled(state.upstream.bill_cut_calls(ctx))
                await _settle(admission, ctx)
            finally:
                _count(state, ctx, model, endpoint, status)


def _count(
    state: GatewayState, ctx: RequestContext, model: str, endpoint: str, status: int
) -> None:
    """The request has ended: count it once, with its final status."""
    state.metrics.requests.labels(ctx.strategy, model, endpoint, str(status)).inc()
    state.metrics.request_duration.labels(ctx.strategy, model, endpoint).observe(
        time.perf_counter() - ctx.arrived
    )


async def _stream_response(
    request: Request,
    state: GatewayState,
    body: AsyncGenerator[bytes, None],
    admission: Admission,
    ctx: RequestContext,
    model: str,
    endpoint: str,
    headers: dict[str, str],
) -> DisconnectAwareStream:
    """An SSE answer. When it has ended (finished, broken, or the client gone), its admission
    is settled and it is counted with the status it really ended with; the access log gets that
    status too (``scope["state"]["final_status"]``)."""

    async def finish_after(body: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        status = 200
        try:
            yield b""  # primed: settled and counted even if the client leaves before a chunk
            async for chunk in body:
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            # the client went away (or the server is shutting down)
            status = CLIENT_CLOSED_REQUEST
            raise
        except BaseException:
            status = 500
            raise
        finally:
            if ctx.failure is not None and status != 500:  # it had ended with an error event
                status = status_of(ctx.failure)
            try:
                await body.aclose()
                await finish_even_if_cancelled(state.upstream.bill_cut_calls(ctx))
                await _settle(admission, ctx)
            finally:
                request.scope["state"]["final_status"] = status
                _count(state, ctx, model, endpoint, status)

    return DisconnectAwareStream(
        await primed(finish_after(body)),
        headers=headers,
        on_disconnect=lambda: state.metrics.client_disconnects.labels(model, endpoint).inc(),
    )


async def _remember(state: GatewayState, key: str, response: Response) -> None:
    """Store a complete answer (not one a budget cut short) under its cache key."""
    headers = {k: v for k, v in response.headers.items() if k.lower().startswith("x-ttc-")}
    if state.cache is None or headers.get("x-ttc-truncated") == "true":
        return
    await state.cache.store_answer(key, CachedAnswer(bytes(response.body), headers))


async def _settle(admission: Admission, ctx: RequestContext) -> None:
    if admission.reservation is None:
        return  # nothing was reserved (no key checked): skip the shield's task
    meter = ctx.meter
    tokens, cost = (meter.tokens, meter.price_usd) if meter is not None else (0, 0.0)
    # Shielded: a client that goes away must not cancel the bookkeeping of what it used.
    await asyncio.shield(admission.settle(tokens, cost))


@router.post("/v1/chat/completions", summary="Create a chat completion", tags=["OpenAI"])
async def chat_completions(request: Request) -> Response:
    return await _sampling(request, "chat")


@router.post("/v1/completions", summary="Create a text completion", tags=["OpenAI"])
async def completions(request: Request) -> Response:
    return await _sampling(request, "completions")


def _model_card(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "ttc-gateway"}


@router.get("/v1/models", summary="List the models this gateway serves", tags=["OpenAI"])
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(m) for m in _state(request).pools.models]}


@router.get(
    "/v1/models/{model_id:path}", summary="Describe one model this gateway serves", tags=["OpenAI"]
)
async def retrieve_model(request: Request, model_id: str) -> dict[str, Any]:
    state = _state(request)
    if model_id not in state.pools.models:
        raise model_not_found(model_id)
    return _model_card(model_id)


@router.get("/v1/strategies", summary="List strategies and their parameters", tags=["TTC"])
async def list_strategies() -> dict[str, Any]:
    return {"object": "list", "data": [spec.describe() for spec in REGISTRY.values()]}


@router.get("/health", summary="Liveness: the gateway process answers", tags=["Operations"])
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: every model has a healthy worker", tags=["Operations"])
async def ready(request: Request) -> Response:
    """200 or 503, and ``status``. The pools and workers behind it (names, health, in-flight,
    addresses) only for an operator: when API keys are required, with ``auth.admin_token``."""
    state = _state(request)
    is_ready = state.pools.ready
    answer: dict[str, Any] = {"status": "ready" if is_ready else "not ready"}
    if await state.access.may_see_internals(request.headers.get("authorization")):
        answer["pools"] = [
            {
                "pool": pool.name,
                "model": pool.model,
                "engine": pool.config.engine.value,
                "roles": list(pool.config.roles),
                "workers": [
                    {
                        "name": w.name,
                        "url": w.url,
                        "healthy": w.healthy,
                        "in_flight": w.in_flight,
                    }
                    for w in pool.workers
                ],
            }
            for pool in state.pools.pools
        ]
    return Response(
        orjson.dumps(answer),
        status_code=200 if is_ready else 503,
        media_type="application/json",
    )


@router.get("/metrics", summary="Prometheus metrics", tags=["Operations"])
async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


class SamplingFastLane:
    """ASGI middleware that sends the two sampling POSTs straight to their handler.

    FastAPI's router and dependency solving cost about a quarter of a proxied request's CPU
    here and do nothing for these routes, which read their body by hand (measured with
    ``ttc-gateway bench overhead``: +47% requests/s at 64 concurrent requests). The routes stay
    declared on the router, so the OpenAPI schema and every other method are unchanged.
    """

    PATHS: ClassVar[dict[str, str]] = {
        "/v1/chat/completions": "chat",
        "/v1/completions": "completions",
    }

    def __init__(self, app: ASGIApp, fastapi_app: ASGIApp) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.PATHS.get(scope["path"]) if scope.get("method") == "POST" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.fastapi_app
        try:
            response = await _sampling(Request(scope, receive), endpoint)
        except Exception as exc:
            response = error_response(exc, f"POST {scope['path']}")
        await response(scope, receive, send)
