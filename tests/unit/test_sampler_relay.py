"""``UpstreamBatch``: the deltas of a network read travel as one queue item, and the budgets
are still checked at every delta (the token total and the cost cap after it, the deadline
before it). Every test but the one about queue items also passed on the line-by-line relay
that came before (``Content`` iterates by line too)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.engines.adapters import OpenAIAdapter
from gateway.engines.vllm import VllmAdapter
from gateway.metering.meter import ModelPrice
from gateway.openai.chunks import StreamTally
from gateway.openai.thinking import ThinkingSplit
from gateway.pipeline.sampler import BudgetGuard, UpstreamBatch, _sample_delta, _Stream
from strategies.sampling import BudgetExhausted, SampleDelta


def sse(*chunks: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (c.encode() if isinstance(c, str) else orjson.dumps(c)) + b"\n\n"
        for c in chunks
    )


def token(index: int, text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": index, "delta": {"content": text}, "finish_reason": finish, **extra}
    return {"id": "x", "choices": [choice]}


class Content:
    """``response.content``: ``iter_any`` gives the scripted reads, then waits if asked."""

    def __init__(self, reads: list[bytes], hang: bool = False) -> None:
        self.reads = reads
        self.hang = hang

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._pieces([[read] for read in self.reads])

    def __aiter__(self) -> AsyncIterator[bytes]:  # by line (what the gateway read before)
        lines: list[list[bytes]] = []
        partial = b""
        for read in self.reads:
            *complete, partial = (partial + read).split(b"\n")
            lines.append([line + b"\n" for line in complete])
        lines.append([partial] if partial else [])
        return self._pieces(lines)

    async def _pieces(self, reads: list[list[bytes]]) -> AsyncIterator[bytes]:
        for read in reads:
            for piece in read:  # a read's lines come without a wait, as from a StreamReader
                yield piece
            await asyncio.sleep(0)
        if self.hang:
            await asyncio.Future()


class Response:
    def __init__(self, content: Content) -> None:
        self.content = content
        self.closed = False

    def release(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Worker:
    name = "w"


class Lease:
    worker = Worker()

    def release(self) -> None:
        pass


class Pool:
    adapter = VllmAdapter()  # its dialect says whether a "stop" was EOS (stop_reason)

    def call_succeeded(self, worker: Worker) -> None:
        pass


class Upstream:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def count_error(self, pool: Pool, worker: Worker, kind: str) -> None:
        self.errors.append(kind)

    async def abort(self, pool: Pool, ctx: Any, worker: Worker, response: Response) -> None:
        response.close()

    async def account_call(self, *args: Any, **kwargs: Any) -> None:
        pass


def batch(
    reads: list[bytes],
    guard: BudgetGuard | None = None,
    k: int = 2,
    hang: bool = False,
) -> tuple[UpstreamBatch, Response, Upstream]:
    response = Response(Content(reads, hang))
    tally = StreamTally(OpenAIAdapter())
    stream = _Stream(Pool(), None, Lease(), response, 0, k, tally, {})  # type: ignore[arg-type]
    upstream = Upstream()
    guard = guard or BudgetGuard(time.perf_counter() + 30)
    return UpstreamBatch(k, [stream], guard, upstream), response, upstream  # type: ignore[arg-type]


async def collect(b: UpstreamBatch, limit: int | None = None) -> list[SampleDelta]:
    out: list[SampleDelta] = []
    events = b.events()
    try:
        async for delta in events:
            out.append(delta)
            if limit is not None and len(out) == limit:
                break
    finally:
        await events.aclose()
    return out


STREAM = sse(
    token(0, "a"),
    token(1, "b"),
    token(0, "c"),
    token(1, "d"),
    token(0, "", "stop", stop_reason=None),
    token(1, "", "length"),
    '{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}',
    "[DONE]",
)


@pytest.mark.parametrize("cut", [0, 1, 37, 150, 200, len(STREAM) - 3])
async def test_deltas_are_the_same_however_the_reads_split_the_stream(cut: int) -> None:
    b, _, _ = batch([STREAM[:cut], STREAM[cut:]])
    deltas = await collect(b)
    assert [(d.sample, d.text, d.tokens, d.finish_reason, d.eos) for d in deltas] == [
        (0, "a", 1, None, None),
        (1, "b", 1, None, None),
        (0, "c", 1, None, None),
        (1, "d", 1, None, None),
        (0, "", 0, "stop", True),
        (1, "", 0, "length", None),
    ]
    assert deltas[0] == SampleDelta(0, "a", 1)
    assert b.finished == {0, 1} and b.guard.tokens == 4
    assert b.streams[0].tally.completed


async def test_one_queue_item_per_read() -> None:
    b, _, _ = batch([STREAM])
    assert b.streams[0].reader is not None
    await b.streams[0].reader
    items = []
    while not b.queue.empty():
        items.append(b.queue.get_nowait())
    assert len(items) == 2 and len(items[0]) == 6  # the read's six deltas, then the end
    assert items[1][1] is b.streams[0]


async def test_the_token_total_is_checked_after_every_chunk_and_nothing_past_it_is_read() -> None:
    guard = BudgetGuard(time.perf_counter() + 30, max_tokens_total=3)
    b, _, _ = batch([STREAM], guard)
    seen: list[SampleDelta] = []
    with pytest.raises(BudgetExhausted) as stopped:
        async for delta in b.events():
            seen.append(delta)
    assert stopped.value.reason == "tokens"
    assert [d.text for d in seen] == ["a", "b", "c"]  # the third reached the total
    # what is billed is what was read: the read's fourth token was left unread
    assert guard.tokens == 3 and b.streams[0].tally.counted_completion_tokens == 3
    assert b.cancelled == {0, 1}


async def test_the_cost_cap_is_checked_after_every_chunk_and_nothing_past_it_is_read() -> None:
    guard = BudgetGuard(time.perf_counter() + 30, max_cost_usd=0.35, prompt_tokens=10)
    b, _, _ = batch([STREAM], guard)
    b.streams[0].price = ModelPrice(input_cost_per_token=0.01, output_cost_per_token=0.1)
    seen: list[SampleDelta] = []
    with pytest.raises(BudgetExhausted) as stopped:
        async for delta in b.events():
            seen.append(delta)
    assert stopped.value.reason == "cost"
    # the prompt (10 x 0.01) and 3 tokens cost 0.4 >= 0.35: the third token's chunk is the
    # last one read (a request is billed at most one chunk per stream past its cap), and the
    # strategy is given every delta that was billed
    assert [d.text for d in seen] == ["a", "b", "c"] and b.cancelled == {0, 1}
    assert b.streams[0].tally.counted_completion_tokens == 3


async def test_the_deadline_is_checked_before_every_delta() -> None:
    guard = BudgetGuard(time.perf_counter() + 30)
    b, _, _ = batch([STREAM], guard)
    seen: list[SampleDelta] = []
    with pytest.raises(BudgetExhausted) as stopped:
        async for delta in b.events():
            seen.append(delta)
            guard.deadline = time.perf_counter()  # passes while the read is half given
    assert stopped.value.reason == "deadline"
    assert [d.text for d in seen] == ["a"] and b.cancelled == {0, 1}


async def test_the_deadline_ends_a_wait_for_a_silent_worker() -> None:
    guard = BudgetGuard(time.perf_counter() + 0.05)
    b, response, _ = batch([sse(token(0, "a"))], guard, hang=True)
    started = time.perf_counter()
    seen: list[SampleDelta] = []
    with pytest.raises(BudgetExhausted) as stopped:
        async for delta in b.events():
            seen.append(delta)
    assert stopped.value.reason == "deadline" and [d.text for d in seen] == ["a"]
    assert 0.04 <= time.perf_counter() - started < 1.0
    assert response.closed  # the stream was aborted


async def test_a_strategy_that_stops_reading_halfway_through_a_read_loses_nothing() -> None:
    b, _, _ = batch([STREAM])
    first = await collect(b, limit=2)
    rest = await collect(b)
    assert [d.text for d in first + rest] == ["a", "b", "c", "d", "", ""]
    assert b.guard.tokens == 4


async def test_cancelled_samples_deltas_are_skipped() -> None:
    b, _, _ = batch([STREAM])
    seen = []
    async for delta in b.events():
        seen.append((delta.sample, delta.text))
        if delta.text == "a":
            b.cancelled.add(1)
    assert seen == [(0, "a"), (0, "c"), (0, "")]


async def test_an_error_event_ends_the_stream_after_the_deltas_before_it() -> None:
    reads = [sse(token(0, "a"), token(1, "b"), {"error": {"message": "boom"}}, token(0, "c"))]
    b, _, upstream = batch(reads)
    deltas = await collect(b)
    assert [(d.sample, d.text, d.finish_reason) for d in deltas] == [
        (0, "a", None),
        (1, "b", None),
        (0, "", "error"),
        (1, "", "error"),
    ]
    assert upstream.errors == ["protocol"] and b.failed == {0, 1}


async def test_a_malformed_chunk_fails_the_unfinished_samples_after_the_good_ones() -> None:
    reads = [sse(token(0, "a"), token(0, "", "stop")) + b'data: {"choices": [{"ind\n\n']
    b, _, upstream = batch(reads)
    deltas = await collect(b)
    assert [(d.sample, d.text, d.finish_reason) for d in deltas] == [
        (0, "a", None),
        (0, "", "stop"),
        (1, "", "error"),
    ]
    assert upstream.errors == ["protocol"] and b.failed == {1}


def test_a_relayed_delta_is_the_sample_delta_its_init_would_make() -> None:
    assert [f.name for f in dataclasses.fields(SampleDelta)] == [
        "sample",
        "text",
        "tokens",
        "logprobs",
        "top_logprobs",
        "finish_reason",
        "eos",
        "reasoning",
    ]
    chat_logprobs = {
        "content": [
            {"token": "a", "logprob": -0.5, "top_logprobs": [{"token": "a", "logprob": -0.5}]},
            {"token": "b", "logprob": -1.5, "top_logprobs": []},
        ]
    }
    text_logprobs = {"tokens": ["a"], "token_logprobs": [None], "top_logprobs": [{"a": -0.1}]}
    tally = StreamTally(OpenAIAdapter())
    (chat,) = tally.observe(token(1, "ab", logprobs=chat_logprobs))
    (stop,) = tally.observe(token(0, "", "stop", stop_reason="###"))
    (text,) = tally.observe({"choices": [{"index": 2, "text": "a", "logprobs": text_logprobs}]})
    made = [  # stop_reason: vLLM's
        _sample_delta(4 + d.choice_index, d, VllmAdapter(), ThinkingSplit())
        for d in (chat, stop, text)
    ]
    assert made == [
        SampleDelta(5, "ab", 2, (-0.5, -1.5), ({"a": -0.5}, {})),
        SampleDelta(4, "", 0, finish_reason="stop", eos=False),
        SampleDelta(6, "a", 1, (0.0,), ({"a": -0.1},)),
    ]
    assert all(type(d) is SampleDelta for d in made) and hash(made[1]) == hash(
        SampleDelta(4, "", 0, finish_reason="stop", eos=False)
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        made[0].text = "changed"  # type: ignore[misc]
