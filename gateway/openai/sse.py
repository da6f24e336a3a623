"""Server-sent events, the codec: reading an engine's stream, writing a client's events.

(Answering a client with a stream is ``gateway.http.streaming``'s.)
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import orjson

DONE = b"[DONE]"


def encode_event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def encode_done() -> bytes:
    return b"data: [DONE]\n\n"


def encode_comment(text: str) -> bytes:
    """An SSE comment line: clients ignore it; it keeps connections and proxies alive."""
    return b": " + text.encode() + b"\n\n"


async def iter_sse_data(lines: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Yield the ``data`` payload of each event of an SSE body (``[DONE]`` included), given its
    lines (an ``aiohttp.StreamReader`` iterates by line)."""
    parts: list[bytes] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if parts:
                yield b"\n".join(parts)
                parts = []
        elif line.startswith(b"data:"):
            parts.append(line[5:].lstrip(b" "))
        # comments (":"), "event:", "id:" and "retry:" lines carry nothing the gateway uses
    if parts:
        yield b"\n".join(parts)
