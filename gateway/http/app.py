"""Build the FastAPI application for one set of settings (``create_app``)."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from gateway import __version__
from gateway.access.control import AccessControl, PriceCeiling, open_store
from gateway.access.response_cache import ResponseCache
from gateway.config import GatewaySettings
from gateway.http.errors import install_error_handlers
from gateway.http.middleware import RequestIdMiddleware
from gateway.http.routes import GatewayState, SamplingFastLane, router
from gateway.metering.meter import Meter, load_price_book, warn_unpriced
from gateway.metrics import GatewayMetrics
from gateway.openai.requests import ChatCompletionRequest, CompletionRequest
from gateway.pipeline.equivalence import open_equivalence
from gateway.pipeline.road import Pipeline
from gateway.pipeline.runner import StrategyRunner
from gateway.upstream.client import Upstream
from gateway.upstream.engine_stats import EngineCollector
from gateway.upstream.pool import PoolRegistry, WorkerPool
from strategies import REGISTRY

log = logging.getLogger("ttc.app")

SETTINGS_ENV = "TTCGW_RESOLVED_SETTINGS"  # not TTC_*: that prefix is for overrides


def create_app(settings: GatewaySettings) -> FastAPI:
    """An app serving ``settings``' pools. Embedded pools must be resolved to URLs first
    (``gateway.engines.embedded.EmbeddedEngines``)."""
    if any(pool.embedded is not None for pool in settings.pools):
        raise ValueError("create_app needs embedded pools resolved to worker URLs first")

    metrics = GatewayMetrics()
    pools = PoolRegistry(
        [WorkerPool(p, settings.health, metrics, settings.circuit_breaker) for p in settings.pools]
    )
    metrics.add_collector(EngineCollector(pools.pools))
    metrics.start_request_series(pools.models, list(REGISTRY))
    prices = load_price_book(settings.metering.prices_file)
    warn_unpriced(prices, pools.models, settings.metering.prices_file)
    meter = Meter(settings.metering, prices, pools.models, metrics)
    access = AccessControl(
        settings.auth,
        settings.state,
        open_store(settings.auth, settings.state, settings.limits.request_timeout_s),
        metrics,
        PriceCeiling.of(meter.prices, pools.models),
    )
    cache = ResponseCache.open(settings.cache, settings.state, metrics)
    same_answer, answer_checker = open_equivalence(settings.answers, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pools.start()
        await meter.start()
        for pool in pools.pools:
            for worker in pool.workers:
                meter.add_worker(pool.name, worker)
            pool.on_worker_added.append(functools.partial(meter.add_worker, pool.name))
        await access.start()
        if answer_checker is not None:
            await answer_checker.start()
        for pool in pools.pools:
            healthy = sum(w.healthy for w in pool.workers)
            log.info(
                "pool %s (%s, model %s, roles %s): %d/%d workers ready",
                pool.name,
                pool.config.engine.value,
                pool.model,
                ",".join(pool.config.roles),
                healthy,
                len(pool.workers),
            )
        try:
            yield
        finally:
            await meter.close()
            await pools.close()
            await access.close()
            if cache is not None:
                await cache.close()
            if answer_checker is not None:
                await answer_checker.close()

    app = FastAPI(
        title="ttc-gateway",
        version=__version__,
        description="OpenAI-compatible gateway for test-time-compute strategies.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN: blank pages offline or behind a
        # firewall. The schema itself is served at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    upstream = Upstream(metrics, meter)
    app.state.gateway = GatewayState(
        settings,
        pools,
        upstream,
        metrics,
        Pipeline(
            upstream,
            StrategyRunner(pools, upstream, metrics, same_answer),
            metrics,
            settings.thinking,
        ),
        access,
        cache,
    )
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(SamplingFastLane, fastapi_app=app)
    app.add_middleware(RequestIdMiddleware, access_log_enabled=settings.server.access_log)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


_BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema, plus the request bodies the routes validate by hand."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    served = app.state.gateway.pools.models
    for path, model in _BODIES.items():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        # This deployment's models: a client (or a fuzzer) learns what `model` may be.
        body["properties"]["model"]["enum"] = served
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
        schema["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    app.openapi_schema = schema
    return schema


def configure_logging(level: str, processes: int = 1) -> None:
    """The gateway's log lines (access lines included) on standard error, in every process;
    with several processes each line names its process id."""
    where = " [%(process)d]" if processes > 1 else ""
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s",
        stream=sys.stderr,
    )


def app_from_environment() -> FastAPI:
    """Factory for uvicorn worker processes: settings come resolved from the parent. Each
    process sets up its own logging (a spawned process starts with none)."""
    settings = GatewaySettings.model_validate_json(os.environ[SETTINGS_ENV])
    configure_logging(settings.server.log_level, settings.server.workers)
    return create_app(settings)
