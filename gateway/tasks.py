"""Async plumbing: cleanup that must run to its end (counting what a request used after it was
cancelled), and generators primed so that their cleanup always runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def finish_even_if_cancelled(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` to its end even if the calling task is cancelled meanwhile (a client that
    leaves during the bookkeeping), then re-raise the cancellation. ``asyncio.shield`` alone
    lets the caller go on while the work still runs: a key would be settled before the tokens
    it paid for were counted."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                continue  # bounded: the work has its own timeouts
        raise


async def primed(body: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """``body`` run to its first ``yield``, an empty priming chunk. An async generator that
    never started runs no ``finally`` when it is closed: a client that leaves before the first
    chunk would leak what ``body`` holds (an upstream response, a worker slot, a settlement).
    Primed, its ``finally`` runs on ``aclose`` whatever happens."""
    if await body.__anext__() != b"":
        raise RuntimeError("a primed stream must yield b'' first")
    return body
