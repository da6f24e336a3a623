"""The shared step machinery (``strategies/steps.py``): the kept thinking and the pieces it
streams, the thinking opener, the cut at ``</think>``, and spec_reason's thinking budget."""

from __future__ import annotations

from typing import Any

import pytest

from strategies.sampling import ThinkingBudget
from strategies.spec_reason import SPEC as SPEC_REASON
from strategies.steps import Thinking, answer_prompt, end_of_thinking, opened
from tests.steps_scripted import Reply, SequenceSampler, run_steps


async def test_the_pieces_streamed_concatenate_to_the_kept_thinking() -> None:
    pieces: list[str] = []

    async def emit(piece: str) -> None:
        pieces.append(piece)

    thinking = Thinking(emit=emit)
    await thinking.keep("a", 1)
    await thinking.keep(" b", 1)  # the same segment goes on
    thinking.close()
    assert thinking.continued == "a b\n\n"
    thinking.close()  # an empty segment is not kept
    await thinking.keep("", 2)  # tokens without text count
    await thinking.keep("c", 1)
    assert pieces == ["a", " b", "\n\nc"] and "".join(pieces) == thinking.text == "a b\n\nc"
    assert thinking.steps == ["a b", "c"] and thinking.tokens == 5
    assert thinking.continued == "a b\n\nc"


def test_the_thinking_is_opened_once_and_closed_before_the_answer() -> None:
    assert opened("<|assistant|>\n") == "<|assistant|>\n<think>\n"
    assert opened("<|assistant|>\n<think>\n") == "<|assistant|>\n<think>\n"
    assert answer_prompt("P<think>\n", "a\n\nb") == "P<think>\na\n\nb\n</think>\n\n"
    assert end_of_thinking("done.\n</think>\n\nThe answer") == ("done.", True)
    assert end_of_thinking("still thinking ") == ("still thinking ", False)


async def test_a_thinking_budget_caps_spec_reasons_kept_steps() -> None:
    script: list[tuple[Any, Reply]] = [
        ("small", Reply("a b c")), ("large", Reply("9")),
        ("small", Reply("d e")), ("large", Reply("9")),
    ]  # fmt: skip
    ran = await run_steps(SPEC_REASON, SequenceSampler(list(script)), ThinkingBudget(4, 10))
    assert ran.outcome.content == "a b c\n\nd e"  # 3 < 4 <= 5 kept tokens
    assert ran.report["stopped"] == "token_budget"
    # without one, the same steps do not stop it: a third draft is asked for
    with pytest.raises(AssertionError, match="unscripted call on small"):
        await run_steps(SPEC_REASON, SequenceSampler(list(script)))
