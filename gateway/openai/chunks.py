"""Token accounting and reassembly of streamed completions.

The gateway counts tokens itself from the stream: engines under-report (llama.cpp counts one
choice of an ``n > 1`` request) and never report on a request that was aborted. Every engine
here streams one token per content chunk unless the chunk carries several logprob entries, which
then give the exact count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


@dataclass
class ChoiceState:
    """What one choice (sample) of a streamed request has produced so far."""

    index: int
    tokens: int = 0
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: Any = None
    logprobs: list[Any] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    role: str = "assistant"
    # The engine's own count for this choice, where it reports one per choice (llama.cpp,
    # which also counts the end-of-sequence token it does not stream).
    reported_tokens: int | None = None

    @property
    def content(self) -> str:
        return "".join(self.text)

    @property
    def billed_tokens(self) -> int:
        """What the choice generated: the tokens streamed, or the engine's count if higher."""
        if self.reported_tokens is None or self.reported_tokens < self.tokens:
            return self.tokens
        return self.reported_tokens


class ChoiceDelta(NamedTuple):
    """What one chunk added to one choice (a tuple: one is made per streamed token)."""

    choice_index: int
    text: str
    tokens: int
    logprobs: list[Any]
    finish_reason: str | None
    raw: dict[str, Any]  # the chunk's choice as the engine sent it


_NO_ENTRIES: list[Any] = []  # shared, never mutated: a choice without logprobs


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    # The part of prompt_tokens the engine did not report (a call aborted before it did),
    # counted by the engine's tokenizer or bounded by the gateway instead.
    estimated_prompt_tokens: int = 0
    # The part of completion_tokens that was thinking (reasoning models), when known.
    reasoning_tokens: int | None = None

    def __add__(self, other: Usage) -> Usage:
        cached = (
            None
            if self.cached_tokens is None and other.cached_tokens is None
            else (self.cached_tokens or 0) + (other.cached_tokens or 0)
        )
        reasoning = (
            None
            if self.reasoning_tokens is None and other.reasoning_tokens is None
            else (self.reasoning_tokens or 0) + (other.reasoning_tokens or 0)
        )
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            cached,
            self.estimated_prompt_tokens + other.estimated_prompt_tokens,
            reasoning,
        )

    def as_openai(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage


class StreamDialect(Protocol):
    """What an engine adapter (``gateway.engines.adapters``) says about its streams' accounting."""

    @property
    def usage_counts_all_choices(self) -> bool: ...
    @property
    def usage_per_choice(self) -> bool: ...
    def chunk_prompt(self, chunk: dict[str, Any]) -> tuple[int, int] | None: ...


class StreamTally:
    """Follows the chunks of one upstream stream (chat or text completions)."""

    def __init__(self, dialect: StreamDialect) -> None:
        self._dialect = dialect
        self.choices: dict[int, ChoiceState] = {}
        self.engine_usage: dict[str, Any] | None = None
        self.completed = False
        self.first_token_seen = False
        self.id: str | None = None
        self.created: int | None = None
        # (prompt, cached) as the engine said them before its usage chunk (llama.cpp)
        self.early_prompt: tuple[int, int] | None = None
        # The prompt tokens counted by the gateway when the engine never said them (set by
        # whoever closes an aborted call; see ``needs_prompt_count``).
        self.counted_prompt_tokens: int | None = None
        # Finished choices whose own usage chunk has not come yet (``usage_per_choice``).
        self._awaiting_usage: list[ChoiceState] = []
        self._usage_per_choice = dialect.usage_per_choice

    def choice(self, index: int) -> ChoiceState:
        state = self.choices.get(index)
        if state is None:
            state = self.choices[index] = ChoiceState(index)
        return state

    def observe(self, chunk: dict[str, Any]) -> list[ChoiceDelta]:
        """Record one parsed chunk; return what it added to each choice. (Run once per
        streamed token: every lookup here counts.)"""
        deltas: list[ChoiceDelta] = []
        if self.id is None:
            self.id = chunk.get("id")
            self.created = chunk.get("created")
        usage = chunk.get("usage")
        if usage:
            self.engine_usage = usage
        elif self.early_prompt is None:
            self.early_prompt = self._dialect.chunk_prompt(chunk)
        raw_choices = chunk.get("choices")
        if not raw_choices:
            if usage and self._awaiting_usage:  # llama.cpp: the usage chunk of one choice
                self._per_choice_usage(usage)
            return deltas
        choices = self.choices
        for raw in raw_choices:
            index = int(raw.get("index", 0))
            state = choices.get(index)
            if state is None:
                state = choices[index] = ChoiceState(index)
            delta = raw.get("delta")
            produced = False
            text = ""
            if delta is not None:  # chat.completion.chunk
                if delta.get("role"):
                    state.role = delta["role"]
                content = delta.get("content")
                if content:
                    text = content
                    state.text.append(text)
                    produced = True
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning:
                    state.reasoning.append(reasoning)
                    produced = True
                tool_calls = delta.get("tool_calls")
                if tool_calls:
                    for call in tool_calls:
                        _merge_tool_call(state.tool_calls, call)
                    produced = True
            elif raw.get("text"):  # text_completion chunk
                text = raw["text"]
                state.text.append(text)
                produced = True
            logprobs = raw.get("logprobs")
            entries = _logprob_entries(logprobs) if logprobs else _NO_ENTRIES
            if entries:
                state.logprobs.extend(entries)
            tokens = 0
            if produced:
                tokens = len(entries) or 1
                state.tokens += tokens
                self.first_token_seen = True
            finish = raw.get("finish_reason")
            if finish:
                state.finish_reason = finish
                state.stop_reason = raw.get("stop_reason", raw.get("matched_stop"))
                if self._usage_per_choice:
                    self._awaiting_usage.append(state)
            if produced or finish:
                deltas.append(ChoiceDelta(index, text, tokens, entries, finish, raw))
        if usage and self._awaiting_usage:
            self._per_choice_usage(usage)
        return deltas

    def _per_choice_usage(self, usage: dict[str, Any]) -> None:
        """An engine that ends each choice with a usage chunk of its own (llama.cpp, after the
        choice's finish chunk): the first finished choice without one gets it."""
        completion = usage.get("completion_tokens")
        if isinstance(completion, int):
            self._awaiting_usage.pop(0).reported_tokens = completion

    @property
    def counted_completion_tokens(self) -> int:
        return sum(c.billed_tokens for c in self.choices.values())

    def _reported_prompt(self) -> tuple[int, int | None]:
        """(prompt tokens, cached ones) as the engine reported them; (0, None) if it did not.
        One request's prompt is prefilled once, whatever its ``n`` (llama.cpp and vLLM share
        it among the choices)."""
        engine = self.engine_usage or {}
        if engine.get("prompt_tokens"):
            return int(engine["prompt_tokens"]), _cached(engine)
        if self.early_prompt is not None:
            return self.early_prompt
        return 0, None

    def needs_prompt_count(self) -> bool:
        """Whether the engine left the prompt tokens unreported (an aborted call): then
        ``counted_prompt_tokens`` should be set before ``usage``."""
        return self._reported_prompt()[0] == 0 and self.counted_prompt_tokens is None

    def usage(self) -> Usage:
        """Usage of the whole request: the engine's where it is trustworthy, else our count.
        A prompt the engine did not report is ``counted_prompt_tokens``, marked estimated."""
        engine = self.engine_usage or {}
        completion = self.counted_completion_tokens
        # An engine whose usage counts every choice never counts more than it generated, even
        # mid-stream (vLLM's continuous usage): its figure holds the tokens it did not stream.
        trusted = self._dialect.usage_counts_all_choices
        if trusted and "completion_tokens" in engine:
            completion = max(completion, int(engine["completion_tokens"]))
        prompt, cached = self._reported_prompt()
        estimated = 0 if prompt else (self.counted_prompt_tokens or 0)
        return Usage(
            prompt_tokens=prompt or estimated,
            completion_tokens=completion,
            cached_tokens=cached,
            estimated_prompt_tokens=estimated,
        )


def _cached(usage: dict[str, Any]) -> int | None:
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    return int(cached) if cached is not None else None


def _logprob_entries(logprobs: Any) -> list[Any]:
    if not logprobs:
        return []
    if isinstance(logprobs, dict):
        content = logprobs.get("content")
        if isinstance(content, list):
            return content
        tokens = logprobs.get("tokens")  # text-completions shape
        if isinstance(tokens, list):
            return tokens
    return []


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    index = int(delta.get("index", len(calls)))
    call = calls.setdefault(
        index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    function = delta.get("function") or {}
    if function.get("name"):
        call["function"]["name"] += function["name"]
    if function.get("arguments"):
        call["function"]["arguments"] += function["arguments"]


def assemble_chat_completion(tally: StreamTally, model: str) -> dict[str, Any]:
    """A ``chat.completion`` object from the chunks of a streamed one."""
    choices = []
    for index in sorted(tally.choices):
        state = tally.choices[index]
        message: dict[str, Any] = {"role": state.role, "content": state.content}
        if state.reasoning:
            message["reasoning_content"] = "".join(state.reasoning)
        if state.tool_calls:
            message["tool_calls"] = [state.tool_calls[i] for i in sorted(state.tool_calls)]
        choice: dict[str, Any] = {
            "index": index,
            "message": message,
            "finish_reason": state.finish_reason,
            "logprobs": {"content": state.logprobs} if state.logprobs else None,
        }
        choices.append(choice)
    return {
        "id": tally.id or "chatcmpl-ttc",
        "object": "chat.completion",
        "created": tally.created or 0,
        "model": model,
        "choices": choices,
        "usage": tally.usage().as_openai(),
    }


def assemble_text_completion(tally: StreamTally, model: str) -> dict[str, Any]:
    """A ``text_completion`` object from the chunks of a streamed one."""
    choices = [
        {
            "index": index,
            "text": tally.choices[index].content,
            "finish_reason": tally.choices[index].finish_reason,
            "logprobs": None,
        }
        for index in sorted(tally.choices)
    ]
    return {
        "id": tally.id or "cmpl-ttc",
        "object": "text_completion",
        "created": tally.created or 0,
        "model": model,
        "choices": choices,
        "usage": tally.usage().as_openai(),
    }


def token_logprobs(
    logprobs: Any,
) -> tuple[tuple[float, ...], tuple[dict[str, float], ...]]:
    """Per-token log-probabilities and top alternatives from either wire shape: the chat shape
    ``{"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}`` (chat, and
    llama.cpp's text completions) or the text-completions shape ``{"tokens", "token_logprobs",
    "top_logprobs": [{token: logprob}]}`` (vLLM, SGLang)."""
    if not isinstance(logprobs, dict):
        return (), ()
    content = logprobs.get("content")
    if isinstance(content, list):
        entries = [e for e in content if isinstance(e, dict)]
        return (
            tuple(float(e.get("logprob", 0.0)) for e in entries),
            tuple(
                {t["token"]: float(t["logprob"]) for t in e.get("top_logprobs") or ()}
                for e in entries
            ),
        )
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    return (
        tuple(float(v) if v is not None else 0.0 for v in values),
        tuple({str(k): float(v) for k, v in (t or {}).items()} for t in tops),
    )
