"""Answering a client with a stream, and noticing when it leaves.

``DisconnectAwareStream`` is a Starlette response that watches for ``http.disconnect`` while it
streams. When the client goes away it cancels the body generator at once (so the generator's
``finally`` closes the upstream stream and the engine aborts the generation), instead of waiting
for the next write to fail.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.tasks import finish_even_if_cancelled

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the ASGI server reports that the client went away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class ClientDisconnected(Exception):
    """The client closed its connection before the answer was complete."""


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            # to its end (its upstream calls closed and counted) even if this is cancelled
            # meanwhile: the request is settled right after
            with contextlib.suppress(asyncio.CancelledError):
                await finish_even_if_cancelled(asyncio.wait({task}))
            watcher.cancel()
            raise ClientDisconnected()
        watcher.cancel()
    return task.result()


class DisconnectAwareStream(Response):
    """Stream ``body`` as SSE; on client disconnect cancel it and call ``on_disconnect``."""

    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        headers: dict[str, str] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self._on_disconnect = on_disconnect
        self.init_headers({**SSE_HEADERS, **(headers or {})})

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await cancel_on_disconnect(receive, self._pump(send))
        except (ClientDisconnected, OSError):
            if self._on_disconnect is not None:
                self._on_disconnect()
        finally:
            await self.body_iterator.aclose()
