"""A reasoning model's output, split into its thinking and its answer.

Engines deliver thinking two ways: as ``reasoning_content`` (or ``reasoning``) deltas when they
run a reasoning parser (vLLM ``--reasoning-parser``, SGLang, llama.cpp ``--reasoning-format``),
or inline in the content between ``<think>`` and ``</think>`` when they do not. A pool says
which to expect (``pools[].reasoning.thinking``):

- ``auto``: reasoning deltas are thinking; content that starts (after whitespace) with the open
  tag is thinking up to the close tag; any other content is answer.
- ``opened``: the chat template opens the thinking itself (DeepSeek-R1's template ends its
  generation prompt with ``<think>\\n``), so content is thinking until the close tag.
- ``none``: content is all answer (reasoning deltas are still thinking).

``ThinkingSplit`` follows one sample across all its upstream calls (a thinking cut at its budget,
or ended by the model before its close tag, is continued by a second call): what it thought, what
it answered, their token counts, and the text the model generated, from which the continuation's
prompt is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ThinkingMode = Literal["auto", "opened", "none"]

# Where a sample is: before its first text (auto: a tag may open the thinking), inside the
# thinking, or in its answer.
_START, _THINKING, _ANSWER = 0, 1, 2


@dataclass
class ThinkingSplit:
    """One sample's thinking and answer, fed one delta at a time."""

    mode: ThinkingMode = "auto"
    open_tag: str = "<think>"
    close_tag: str = "</think>"
    thinking: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    thinking_tokens: int = 0
    answer_tokens: int = 0
    # Every piece of content the model generated, tags included (the engine parsed none).
    generated: list[str] = field(default_factory=list)
    parsed_by_engine: bool = False  # thinking came as reasoning deltas
    cut: bool = False  # its thinking was ended by the gateway at the budget
    chat: bool = True  # a chat sample (False: a raw prompt's, mode "none", not reported)
    # It ended before its text showed whether it thinks (only whitespace or part of the
    # opening tag): a cut then closes an empty thinking instead of continuing that text.
    undecided: bool = False
    _held: str = ""  # content that may be the start of a tag
    _held_tokens: int = 0
    _trim: bool = False  # the answer has not begun since the thinking closed
    _state: int = _START

    def __post_init__(self) -> None:
        if self.mode == "opened":
            self._state = _THINKING
        elif self.mode == "none":
            self._state = _ANSWER

    @property
    def thinking_open(self) -> bool:
        """Still thinking: no answer text has come since the thinking began."""
        if self.parsed_by_engine:
            return not self.answer
        return self._state == _THINKING

    def feed(self, content: str, reasoning: str, tokens: int) -> tuple[str, str]:
        """Record one delta of the sample; return (answer text, thinking text) it added. Its
        tokens are thinking if it was thinking before or after the delta, or brought reasoning
        (the close tag's token is thinking); tokens of text held back as a possible tag wait
        until it is known."""
        answer_text = thinking_text = ""
        before = self._state
        if reasoning:
            self.parsed_by_engine = True
            self._trim = not self.answer  # the blank line engines put before the answer
            thinking_text = reasoning
        if content:
            self.generated.append(content)
            if self._state == _ANSWER:
                answer_text = content
            else:
                answer_text, more = self._split(self._held + content)
                thinking_text += more
        if thinking_text:
            self.thinking.append(thinking_text)
        if self._trim and answer_text:  # the blank line after the close tag
            answer_text = answer_text.lstrip()
            self._trim = not answer_text
        if answer_text:
            self.answer.append(answer_text)
        tokens += self._held_tokens
        self._held_tokens = 0
        if reasoning or _THINKING in (before, self._state):
            self.thinking_tokens += tokens
        elif self._state == _START:
            self._held_tokens = tokens
        else:
            self.answer_tokens += tokens
        return answer_text, thinking_text

    def flush(self) -> tuple[str, str]:
        """The sample ended: text held back as a possible tag is what it seemed."""
        held, self._held = self._held, ""
        tokens, self._held_tokens = self._held_tokens, 0
        if self._state == _THINKING:
            self.thinking_tokens += tokens
            if held:
                self.thinking.append(held)
            return "", held
        self.answer_tokens += tokens
        if self._state == _START and self.generated and not self.parsed_by_engine:
            self.undecided = True
        if held:
            self._state = _ANSWER
            self.answer.append(held)
        return held, ""

    def continue_answer(self) -> None:
        """What follows is answer (a continuation's output), the thinking having ended."""
        self._held = ""
        self._state = _ANSWER

    def _split(self, text: str) -> tuple[str, str]:
        self._held = ""
        if self._state == _START:
            stripped = text.lstrip()
            if stripped.startswith(self.open_tag):
                self._state = _THINKING
                text = stripped[len(self.open_tag) :]
            elif self.open_tag.startswith(stripped):  # maybe the tag, not all here yet
                self._held = text
                return "", ""
            else:
                self._state = _ANSWER
                return text, ""
        end = text.find(self.close_tag)
        if end >= 0:
            self._state = _ANSWER
            self._trim = True
            return text[end + len(self.close_tag) :], text[:end]
        keep = _partial_suffix(text, self.close_tag)
        if keep:
            self._held = text[-keep:]
            text = text[:-keep]
        return "", text

    def prompt_after(self, rendered: str, end_of_thinking: str) -> str:
        """The raw prompt that continues this sample after ``rendered`` (the chat rendered by
        the engine's template): what it generated, with ``end_of_thinking`` appended if it was
        still thinking (the cut). Thinking the engine parsed out is put back between tags."""
        opened = rendered.rstrip().endswith(self.open_tag)
        opening = "" if opened else self.open_tag + "\n"
        if self.parsed_by_engine:
            text = opening + "".join(self.thinking)
            if not self.thinking_open:
                text += end_of_thinking + "".join(self.answer)
        elif not self.generated or self.undecided:
            # the budget was 0 (or ran out before the text said): an empty, closed thinking
            return rendered if self.mode == "none" else rendered + opening + end_of_thinking
        else:
            text = "".join(self.generated)
        if self.thinking_open:
            keep = _partial_suffix(text, self.close_tag)  # cut inside the close tag
            text = text[: len(text) - keep] + end_of_thinking
        return rendered + text


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that is a proper start of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
