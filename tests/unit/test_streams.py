from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.engines import LlamaCppAdapter, VllmAdapter
from gateway.sse import iter_sse_data
from gateway.streams import StreamTally, assemble_chat_completion


def _chunk(
    index: int, content: str | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {
        "id": "x",
        "created": 1,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish, **extra}],
    }


def test_tally_counts_each_choice_and_distrusts_partial_engine_usage() -> None:
    tally = StreamTally(LlamaCppAdapter(), choices=2)
    for chunk in [
        _chunk(0, None),
        _chunk(1, "a"),
        _chunk(0, "b"),
        _chunk(1, "c"),
        _chunk(1, None, "stop"),
        _chunk(0, None, "length"),
    ]:
        tally.observe(chunk)
    tally.observe({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
    tally.completed = True
    usage = tally.usage()
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 3)
    completion = assemble_chat_completion(tally, "m")
    assert [c["message"]["content"] for c in completion["choices"]] == ["b", "ac"]
    assert [c["finish_reason"] for c in completion["choices"]] == ["length", "stop"]


def test_tally_trusts_complete_engine_usage_when_the_engine_counts_all_choices() -> None:
    tally = StreamTally(VllmAdapter())
    tally.observe(_chunk(0, "ab"))  # one chunk carrying two tokens
    tally.observe({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    tally.completed = True
    assert tally.usage().completion_tokens == 2


def test_aborted_stream_uses_the_gateway_count() -> None:
    tally = StreamTally(VllmAdapter())
    tally.observe(_chunk(0, "a", usage=None))
    tally.observe({**_chunk(0, "b"), "usage": {"prompt_tokens": 5, "completion_tokens": 9}})
    assert tally.usage().completion_tokens == 2  # not completed: our own count


def test_logprob_entries_give_the_token_count() -> None:
    tally = StreamTally(VllmAdapter())
    tally.observe(_chunk(0, "abc", logprobs={"content": [{}, {}, {}]}))
    assert tally.usage().completion_tokens == 3


def test_tool_call_deltas_are_merged() -> None:
    tally = StreamTally(VllmAdapter())
    for part in [
        {"index": 0, "id": "call_1", "function": {"name": "get", "arguments": '{"a"'}},
        {"index": 0, "function": {"arguments": ": 1}"}},
    ]:
        tally.observe({"choices": [{"index": 0, "delta": {"tool_calls": [part]}}]})
    message = assemble_chat_completion(tally, "m")["choices"][0]["message"]
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}
    ]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
async def test_sse_parser(newline: bytes) -> None:
    lines = [b": comment", b'data: {"a":1}', b"", b"event: x", b"data:[DONE]", b""]

    async def body() -> AsyncIterator[bytes]:
        for line in lines:
            yield line + newline

    assert [event async for event in iter_sse_data(body())] == [b'{"a":1}', b"[DONE]"]
