"""What a stand-in engine answers: per-sample text and timing, or a failure mode.

A ``Script`` is plain data, so it can be set in-process (``StandinEngine.script = ...``) or sent
as JSON to ``POST /standin/script`` of a stand-in running in another process
(``Script.from_json`` / ``Script.to_json``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

_TOKEN = re.compile(r"\s*\S+|\s+")

REASONING_MODES = ("none", "field", "tags", "opened")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def split_tokens(text: str) -> list[str]:
    """Split text into word tokens that keep their leading whitespace ("a b" -> "a", " b")."""
    return _TOKEN.findall(text)


@dataclass
class SampleScript:
    """One choice (sample) of a completion.

    ``text`` is a list of tokens, or a string split into word tokens; ``None`` means the
    default text derived from the prompt. ``finish_reason`` overrides the natural one
    ("stop" at the end of the text, "length" at ``max_tokens``). ``logprobs`` gives the
    chosen token's log-probability per token (default: a fixed deterministic pattern).
    ``thinking`` (tokenised like ``text``) is what a reasoning model thinks before it answers
    ``text``; only a ``Script`` with ``reasoning`` other than ``"none"`` produces it.
    """

    text: str | list[str] | None = None
    token_delay_s: float = 0.0
    first_token_delay_s: float | None = None
    finish_reason: str | None = None
    logprobs: list[float] | None = None
    thinking: str | list[str] | None = None

    def tokens(self) -> list[str] | None:
        return _tokens_of(self.text)

    def thinking_tokens(self) -> list[str]:
        return _tokens_of(self.thinking) or []


def _tokens_of(text: str | list[str] | None) -> list[str] | None:
    if text is None:
        return None
    if isinstance(text, str):
        return split_tokens(text)
    return list(text)


@dataclass
class Script:
    """How the stand-in answers every request until the script is changed.

    ``samples[i]`` scripts choice ``i``; choices beyond the list reuse the last entry. With
    ``draw``, each generation request takes the next choices instead: its choice ``i`` plays
    ``samples[drawn + i]``, ``drawn`` counting the choices of the requests before it (for
    strategies that sample in waves of requests).
    Failure modes, checked in this order: ``status`` (an HTTP error in the engine's error
    shape, message ``error_message``), ``hang`` (never answer; only a disconnect ends it),
    ``malformed`` (invalid JSON, or a broken SSE event after the first chunks),
    ``die_after_chunks`` (streams only: close the connection abruptly after that many SSE
    events; with ``die_cleanly`` end the HTTP body properly but without ``[DONE]``).
    ``health_status`` is what ``GET /health`` answers.

    ``reasoning`` makes it a reasoning model, served one of three ways (every token, tags
    included, counts in ``max_tokens``, usage and the engine's counters):

    - ``"none"``: no thinking (a sample's ``thinking`` is ignored);
    - ``"field"``: a reasoning parser splits the answer: chat sends the thinking as
      ``delta.<reasoning_field>`` / ``message.<reasoning_field>``, the answer as content;
    - ``"tags"``: the model writes ``<think>``, the thinking, ``</think>``, ``"\n\n"``, then
      the answer, all in content (each tag one token);
    - ``"opened"``: the chat template ends with ``<think>\n``, so the content starts with the
      thinking, then ``</think>``, ``"\n\n"`` and the answer.

    A raw prompt (``/v1/completions``) continues the text as written: with ``</think>`` after
    its last ``<think>`` only the answer comes; with ``<think>`` still open the rest of the
    thinking, ``</think>``, ``"\n\n"`` and the answer; without either tag, what a chat answer
    would hold (``"field"`` writes its tags there, like ``"tags"``).
    """

    samples: list[SampleScript] = field(default_factory=list)
    draw: bool = False
    status: int | None = None
    error_message: str = "scripted failure"
    hang: bool = False
    malformed: bool = False
    die_after_chunks: int | None = None
    die_cleanly: bool = False
    health_status: int = 200
    reasoning: str = "none"
    reasoning_field: str = "reasoning_content"

    def __post_init__(self) -> None:
        if self.reasoning not in REASONING_MODES:
            raise ValueError(f"reasoning must be one of {REASONING_MODES}, not {self.reasoning!r}")

    @classmethod
    def text(cls, *texts: str | list[str], token_delay_s: float = 0.0) -> Script:
        """One sample per text, all with the same per-token delay."""
        return cls(samples=[SampleScript(t, token_delay_s=token_delay_s) for t in texts])

    def sample(self, index: int) -> SampleScript:
        if not self.samples:
            return SampleScript()
        return self.samples[min(index, len(self.samples) - 1)]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Script:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown script fields: {sorted(unknown)}")
        samples = [SampleScript(**s) for s in data.get("samples") or []]
        return cls(**{**data, "samples": samples})
