"""Running ASGI apps (a stand-in, or the gateway itself) on a free loopback port in this loop.

``serve_asgi`` starts a ``uvicorn.Server`` inside the running event loop and yields its base
URL; ``serve_standin`` does that for a ``StandinEngine`` and yields a ``RunningStandin`` (URL +
engine handle). Both stop the server on exit, even with requests still open.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from tests.standin.engine import StandinEngine
from tests.standin.script import Script

SHUTDOWN_GRACE_S = 2.0


def bind_free_port(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready socket on ``port`` (0: a free one); the caller owns it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@contextlib.asynccontextmanager
async def serve_asgi(
    app: Any, *, lifespan: str = "auto", host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1:<free port> until the block exits; yields the base URL.

    Drives ``uvicorn.Server.startup``/``shutdown`` directly: no main-loop tick to wait for and
    no signal handlers taken from the test process.
    """
    sock = bind_free_port(host, port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup(sockets=[sock])
    except SystemExit:  # uvicorn's way of reporting a failed lifespan start-up
        sock.close()
        raise RuntimeError(f"{app!r} failed to start (see its log)") from None
    try:
        yield f"http://{host}:{port}"
    finally:
        await server.shutdown(sockets=[sock])


@dataclass
class RunningStandin:
    """A stand-in serving in this process: its base URL and its engine (the handle)."""

    url: str
    engine: StandinEngine


@contextlib.asynccontextmanager
async def serve_standin(
    flavor: str = "vllm",
    script: Script | None = None,
    *,
    served_model: str | None = None,
    max_running: int | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[RunningStandin]:
    """Start a stand-in of ``flavor`` on ``host``:``port`` (0: a free port); yields its URL
    and handle."""
    engine = StandinEngine(flavor, script, served_model=served_model, max_running=max_running)
    async with serve_asgi(engine, lifespan="off", host=host, port=port) as url:
        yield RunningStandin(url, engine)
