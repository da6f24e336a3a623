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


class SseDecoder:
    """Splits an SSE body, fed in pieces of any size (whole network reads), into the ``data``
    payloads of its events.

    Lines end with LF, CRLF or CR; a blank line ends an event; an event's ``data:`` lines are
    joined with LF (the spaces after the colon dropped); comments (``:``), ``event:``, ``id:``
    and ``retry:`` lines carry nothing the gateway uses; an event with no data is no event.
    What follows the last complete event waits for the next piece (``close`` at the end of the
    body ends the last event even without its blank line). The common case, ``data: ...`` events
    split on ``\n\n``, costs one ``split`` per piece and a slice per event.
    """

    __slots__ = ("_cr", "_pending")

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # the body after the last complete event
        self._cr = False  # the pending body ends with a CR that may be half of a CRLF

    def feed(self, piece: bytes) -> list[bytes]:
        """The payloads of the events that ``piece`` completes, in order."""
        if (
            not self._cr
            and b"\r" not in piece
            and b"\n\n" not in piece
            and not (piece[:1] == b"\n" and self._pending and self._pending[-1][-1:] == b"\n")
        ):
            if piece:  # no blank line: no event ends here (and long events cost no rescans)
                self._pending.append(piece)
            return []
        if self._pending:
            self._pending.append(piece)
            piece = b"".join(self._pending)
            self._pending = []
        held = b""
        if b"\r" in piece:
            if piece.endswith(b"\r"):  # the LF of its CRLF may be in the next piece
                piece, held = piece[:-1], b"\r"
            piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        self._cr = bool(held)
        events = piece.split(b"\n\n")
        tail = events.pop()
        if tail or held:
            self._pending.append(tail + held)
        if piece.count(b"\n", 0, len(piece) - len(tail)) == 2 * len(events):
            # No line ends but the blank lines: every event is one line (the usual case).
            return [event[5:].lstrip(b" ") for event in events if event.startswith(b"data:")]
        out: list[bytes] = []
        for event in events:
            _add_event(event, out)
        return out

    def close(self) -> list[bytes]:
        """The end of the body: the payload of an event it left without its blank line."""
        body = b"".join(self._pending)
        self._pending = []
        self._cr = False
        out: list[bytes] = []
        for event in body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n\n"):
            _add_event(event, out)
        return out


def _add_event(event: bytes, out: list[bytes]) -> None:
    """Append the data of one event (its lines, LF-separated, no blank line among them)."""
    parts = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    if parts:
        out.append(b"\n".join(parts))


async def iter_sse_batches(pieces: AsyncIterable[bytes]) -> AsyncIterator[list[bytes]]:
    """The ``data`` payloads of an SSE body (``[DONE]`` included), a list per piece that
    completed any, given the body in pieces of any size: pass
    ``response.content.iter_any()`` to parse whole network reads."""
    decoder = SseDecoder()
    async for piece in pieces:
        events = decoder.feed(piece)
        if events:
            yield events
    events = decoder.close()
    if events:
        yield events


async def iter_sse_data(pieces: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The ``data`` payload of each event of an SSE body (``[DONE]`` included), given the body
    in pieces of any size: whole reads (``response.content.iter_any()``, the cheap way) or
    lines (an ``aiohttp.StreamReader`` iterates by line)."""
    async for events in iter_sse_batches(pieces):
        for data in events:
            yield data
