from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.engines.llamacpp import LlamaCppAdapter
from gateway.engines.sglang import SglangAdapter
from gateway.engines.vllm import VllmAdapter
from gateway.openai.chunks import StreamTally, assemble_chat_completion
from gateway.openai.sse import iter_sse_data


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
    tally = StreamTally(LlamaCppAdapter())
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


def test_an_aborted_stream_bills_the_higher_of_its_count_and_the_engines_so_far() -> None:
    # vLLM's continuous usage: what the engine generated so far, here more than was streamed
    # (a token it had not sent when the stream was closed)
    tally = StreamTally(VllmAdapter())
    tally.observe(_chunk(0, "a", usage=None))
    tally.observe({**_chunk(0, "b"), "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
    assert tally.usage().completion_tokens == 3
    # with n=2 a chunk's usage is its own choice's: lower than the count over both choices
    both = StreamTally(VllmAdapter())
    for index in (0, 1, 0, 1):
        both.observe({**_chunk(index, "x"), "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    assert both.usage().completion_tokens == 4


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


def test_llamacpp_says_the_prompt_before_the_end_and_it_counts_once_for_n_choices() -> None:
    """With ``timings_per_token`` every llama.cpp chunk carries prompt_n + cache_n; with
    n=3 the prompt is prefilled once (as llamacpp:prompt_tokens_total counts it), and a stream
    aborted before its usage chunks still bills it."""
    tally = StreamTally(LlamaCppAdapter())
    timings = {"prompt_n": 18, "cache_n": 24, "predicted_n": 1}
    for index in (1, 2, 0):
        tally.observe({**_chunk(index, "x"), "timings": timings})
    usage = tally.usage()  # not completed: aborted here
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (42, 24, 3)
    assert usage.estimated_prompt_tokens == 0 and not tally.needs_prompt_count()


def test_a_prompt_no_engine_reported_is_counted_and_marked_estimated() -> None:
    tally = StreamTally(VllmAdapter())
    tally.observe(_chunk(0, "a"))  # no continuous usage: aborted before the engine said
    assert tally.needs_prompt_count()
    tally.counted_prompt_tokens = 35
    usage = tally.usage()
    assert (usage.prompt_tokens, usage.estimated_prompt_tokens) == (35, 35)
    assert not tally.needs_prompt_count()
    reported = StreamTally(VllmAdapter())
    reported.observe({**_chunk(0, "a"), "usage": {"prompt_tokens": 7, "completion_tokens": 1}})
    assert not reported.needs_prompt_count() and reported.usage().estimated_prompt_tokens == 0


def test_llamacpp_bills_each_choice_its_own_usage_chunk_with_the_unstreamed_end_token() -> None:
    # llama.cpp, n=2: each choice's finish chunk is followed by a usage chunk of its own
    # (choices: []) whose count includes the end-of-sequence token it never streams
    tally = StreamTally(LlamaCppAdapter())
    for chunk in (_chunk(0, "a"), _chunk(1, "b"), _chunk(1, "c"), _chunk(1, None, "stop")):
        tally.observe(chunk)
    tally.observe({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
    tally.observe(_chunk(0, "d"))
    tally.observe(_chunk(0, None, "length"))
    tally.observe({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    tally.completed = True
    assert [tally.choice(i).billed_tokens for i in (0, 1)] == [2, 3]
    assert tally.usage().completion_tokens == 5  # as llamacpp:tokens_predicted_total counts


def test_each_engine_says_whether_a_stop_was_end_of_sequence_or_a_stop_string() -> None:
    vllm = VllmAdapter()
    # vLLM: None at EOS; a string is the client's stop string; a token id is a stop token
    # (a model's extra end-of-sequence ids from its generation config are stop token ids)
    assert [vllm.ended_at_eos({"stop_reason": r}) for r in (None, "###", 128009)] == [
        True,
        False,
        True,
    ]
    assert vllm.ended_at_eos({}) is None
    sglang = SglangAdapter()
    assert [sglang.ended_at_eos({"matched_stop": m}) for m in (2, "###")] == [True, False]
    llamacpp = LlamaCppAdapter()
    assert [llamacpp.ended_at_eos({"stop_type": t}) for t in ("eos", "word")] == [True, False]
    assert llamacpp.ended_at_eos({}) is None  # its stream does not say
