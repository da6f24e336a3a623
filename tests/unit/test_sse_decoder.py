"""``gateway.openai.sse.SseDecoder``: an SSE body fed as whole network reads, split anywhere,
gives the same payloads as the body read line by line."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from gateway.openai.sse import SseDecoder, iter_sse_batches, iter_sse_data


def reference(body: bytes) -> list[bytes]:
    """The SSE rules, line by line (lines end with CRLF, LF or CR), as the gateway applies
    them: ``data:`` lines joined with LF, spaces after the colon dropped, a blank line ends an
    event, an event without data is none, the end of the body ends the last event."""
    out: list[bytes] = []
    parts: list[bytes] = []
    for line in re.split(rb"\r\n|\n|\r", body):
        if not line:
            if parts:
                out.append(b"\n".join(parts))
            parts = []
        elif line.startswith(b"data:"):
            parts.append(line[5:].lstrip(b" "))
    if parts:
        out.append(b"\n".join(parts))
    return out


def decode(pieces: list[bytes]) -> list[bytes]:
    decoder = SseDecoder()
    out: list[bytes] = []
    for piece in pieces:
        out += decoder.feed(piece)
    return out + decoder.close()


VLLM = (
    b'data: {"id":"1","choices":[{"index":0,"delta":{"content":" 7"}}]}\n\n'
    b'data: {"id":"1","choices":[{"index":1,"delta":{"content":" 7"}}]}\n\n'
    b'data: {"id":"1","choices":[],"usage":{"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)
BODIES = {
    "lf": VLLM,
    "crlf": VLLM.replace(b"\n", b"\r\n"),
    "cr": VLLM.replace(b"\n", b"\r"),
    "multi-line data": b"data: a\ndata:b\ndata:  c\n\ndata: [DONE]\n\n",
    "comments and fields": b": ping\n\nevent: x\nid: 3\ndata: {}\nretry: 5\n\n: only a comment\n\n"
    b"data: [DONE]\n\n",
    "no blank line at the end": b"data: 1\n\ndata: 2",
    "one newline at the end": b"data: 1\n\ndata: 2\n",
    "extra blank lines": b"\n\ndata: 1\n\n\n\ndata: 2\r\n\r\n\r\n",
    "mixed line ends": b"data: 1\r\ndata: 2\n\r\ndata: 3\r\r: x\ndata: 4\n\n",
    "cr then crlf": b"data: 1\r\r\ndata: 2\r\n\r\n",
    "data without value": b"data:\n\ndata\n\ndata: x\n\n",
}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_every_split_position_gives_the_payloads_of_the_whole_body(name: str) -> None:
    body = BODIES[name]
    expected = reference(body)
    assert decode([body]) == expected
    for cut in range(len(body) + 1):
        assert decode([body[:cut], body[cut:]]) == expected, cut


@pytest.mark.parametrize("name", ["crlf", "mixed line ends", "cr then crlf", "multi-line data"])
def test_every_pair_of_split_positions_and_byte_by_byte(name: str) -> None:
    body = BODIES[name][:80]
    expected = reference(body)
    for i in range(len(body) + 1):
        for j in range(i, len(body) + 1):
            assert decode([body[:i], body[i:j], body[j:]]) == expected, (i, j)
    assert decode([body[i : i + 1] for i in range(len(body))]) == expected


def test_the_expected_payloads() -> None:
    assert reference(BODIES["lf"])[-2:] == [
        b'{"id":"1","choices":[],"usage":{"completion_tokens":2}}',
        b"[DONE]",
    ]
    assert decode([BODIES["crlf"]]) == decode([BODIES["lf"]])
    assert decode([BODIES["multi-line data"]]) == [b"a\nb\nc", b"[DONE]"]
    assert decode([BODIES["comments and fields"]]) == [b"{}", b"[DONE]"]
    assert decode([BODIES["no blank line at the end"]]) == [b"1", b"2"]
    assert decode([BODIES["extra blank lines"]]) == [b"1", b"2"]
    assert decode([BODIES["mixed line ends"]]) == [b"1\n2", b"3", b"4"]
    assert decode([BODIES["cr then crlf"]]) == [b"1", b"2"]
    assert decode([BODIES["data without value"]]) == [b"", b"x"]


def test_events_are_given_as_soon_as_their_blank_line_arrives() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: 1\n") == []
    assert decoder.feed(b"\ndata: 2\n\nda") == [b"1", b"2"]
    assert decoder.feed(b"ta: 3") == []
    assert decoder.feed(b"\r\n") == []
    assert decoder.feed(b"\r\n") == [b"3"]
    # a CR that ends the piece waits for the next: it may be the first half of a CRLF
    assert decoder.feed(b"data: 4\r\n\r") == []
    assert decoder.feed(b"\ndata: 5\n\n") == [b"4", b"5"]
    assert decoder.close() == []


def test_a_long_event_in_many_pieces_is_joined_once() -> None:
    decoder = SseDecoder()
    payload = b'{"text":"' + b"x" * 100_000 + b'"}'
    body = b"data: " + payload + b"\n\n"
    pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    out = [event for piece in pieces for event in decoder.feed(piece)]
    assert out == [payload] and decoder.close() == []


async def test_batches_per_piece_and_the_trailing_event() -> None:
    async def reads() -> AsyncIterator[bytes]:
        yield b"data: 1\n\ndata: 2\n\nda"
        yield b"ta: 3\n"
        yield b"\ndata: 4"

    assert [batch async for batch in iter_sse_batches(reads())] == [
        [b"1", b"2"],
        [b"3"],
        [b"4"],
    ]
    assert [data async for data in iter_sse_data(reads())] == [b"1", b"2", b"3", b"4"]
