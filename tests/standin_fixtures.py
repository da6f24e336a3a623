"""Helpers to run the gateway in front of engine stand-ins inside a test's event loop.

``serve_gateway(pool, ...)`` builds ``GatewaySettings`` from pools, serves ``create_app`` on a
free loopback port and yields a ``RunningGateway`` (URL, an httpx client, readiness helpers).
``pool_for(engine, *urls)`` makes the ``PoolConfig`` for stand-ins. ``sse_events`` parses an
SSE body the way a client sees it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import EngineKind, GatewaySettings, HealthCheckConfig, PoolConfig, WorkerConfig
from gateway.http.app import create_app
from tests.standin import serve_asgi

PUBLIC_MODEL = "public-model"
ENGINE_MODEL = "engine-model"


def pool_for(engine: str, *urls: str, name: str = "pool", **options: Any) -> PoolConfig:
    """A pool serving ``PUBLIC_MODEL`` from the stand-ins at ``urls`` (engine name
    ``ENGINE_MODEL`` upstream)."""
    return PoolConfig(
        name=name,
        engine=EngineKind(engine),
        model=options.pop("model", PUBLIC_MODEL),
        upstream_model=options.pop("upstream_model", ENGINE_MODEL),
        workers=[WorkerConfig(url=u) for u in urls],
        **options,
    )


@dataclass
class RunningGateway:
    """A gateway serving in this process."""

    url: str
    client: httpx.AsyncClient
    app: FastAPI

    async def workers(self) -> dict[str, dict[str, Any]]:
        """``/ready``'s view of every worker, by URL: healthy, in_flight."""
        ready = (await self.client.get("/ready")).json()
        return {w["url"]: w for pool in ready["pools"] for w in pool["workers"]}

    async def in_flight(self) -> dict[str, int]:
        return {url: w["in_flight"] for url, w in (await self.workers()).items()}

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of ``/metrics``' samples named ``name`` whose labels include ``labels``."""
        text = (await self.client.get("/metrics")).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


@contextlib.asynccontextmanager
async def serve_gateway(
    *pools: PoolConfig, health_interval_s: float = 30.0, **settings: Any
) -> AsyncIterator[RunningGateway]:
    """Serve the gateway for ``pools``; health checks run at start and every
    ``health_interval_s`` (long by default, so tests control when workers change state)."""
    config = GatewaySettings(
        pools=list(pools),
        health=HealthCheckConfig(interval_s=health_interval_s, timeout_s=1.0),
        **settings,
    )
    app = create_app(config)
    async with (
        serve_asgi(app, lifespan="on") as url,
        httpx.AsyncClient(base_url=url, timeout=10.0) as client,
    ):
        yield RunningGateway(url, client, app)


def sse_events(body: str) -> list[Any]:
    """The data payloads of an SSE body: parsed JSON, or the string ``"[DONE]"``."""
    events: list[Any] = []
    for block in body.split("\n\n"):
        data = "\n".join(
            line[5:].lstrip() for line in block.splitlines() if line.startswith("data:")
        )
        if data:
            events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


def chat_body(content: str = "What is two plus two?", **extra: Any) -> dict[str, Any]:
    return {"model": PUBLIC_MODEL, "messages": [{"role": "user", "content": content}], **extra}
