"""The machinery of step-level strategies: a reasoning trace written step by step, each step by
whichever model the strategy picks (``spec_reason``, ``glimp_router``, ``speculative_thinking``).

Every call is a raw ``/v1/completions`` on a prompt the gateway rendered once per role with that
role's engine chat template (``Prompts``), continued with the steps kept so far, so no chat
template can drop or move the steps; every call of a role stays on one worker (a ``sticky_key``
per strategy) to hit its prefix cache. Steps end at a blank line (``STEP_DELIMITER``, passed as
a stop string, which engines cut from the text) and are re-joined with it. ``complete`` runs one
such call to its end; ``Thinking`` holds the kept steps and streams them as they are kept.

Strategies that end with a separate answer (GlimpRouter, Speculative Thinking) write the steps
as the model's thinking, opened with ``<think>`` (``Prompts.thinking``) and closed with
``answer_prompt`` before the answer is written.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from strategies.sampling import RoleName, Sampler, SampleRequest, ThinkingBudget

STEP_DELIMITER = "\n\n"
ANSWER_MARKERS = ("boxed", "Answer:", "ANSWER:", "The answer is", "####")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# Step sampling when the request sets none: QwQ's and the R1 distills' usage guidelines, which
# SpecReason, GlimpRouter and Speculative Thinking all use.
TEMPERATURE = 0.6
TOP_P = 0.95


@dataclass
class Call:
    """What one single-sample completion produced."""

    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    eos: bool | None = None
    top_logprobs: dict[str, float] | None = None  # alternatives for the first token

    @property
    def failed(self) -> bool:
        return self.finish_reason not in ("stop", "length")

    @property
    def ended(self) -> bool:
        """The model stopped on its own: EOS where the engine says so, else an empty step."""
        if self.finish_reason != "stop":
            return False
        return self.eos if self.eos is not None else not self.text.strip()


async def complete(
    sampler: Sampler, role: RoleName, prompt: str, params: dict[str, Any], sticky_key: str
) -> Call:
    """One raw completion on ``role``'s pool, read to its end; its worker slot is given back.
    ``params`` are the upstream sampling fields (``max_tokens``, ``stop``, ``logprobs``: the
    top-k count of the alternatives wanted for the first token, in ``Call.top_logprobs``)."""
    # No ``thinking`` here: these calls are the steps of a trace the strategy budgets itself,
    # and the sampler would cut each of them at the request's thinking budget.
    request = SampleRequest(prompt=prompt, params=params, sticky_key=sticky_key)
    batch = await sampler.start(request, 1, role)
    call = Call()
    try:
        async with aclosing(batch.events()) as events:
            async for delta in events:
                call.text += delta.text
                call.tokens += delta.tokens
                if call.top_logprobs is None and delta.top_logprobs:
                    call.top_logprobs = delta.top_logprobs[0]
                if delta.finish_reason is not None:
                    call.finish_reason = delta.finish_reason
                    call.eos = delta.eos
    finally:
        await batch.cancel()  # finished: closes the stream and releases the worker slot
    return call


def sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    """Step sampling: the request's ``temperature`` and ``top_p``, else 0.6 / 0.95."""
    return {
        "temperature": _or(body.get("temperature"), TEMPERATURE),
        "top_p": _or(body.get("top_p"), TOP_P),
    }


def step_params(body: Mapping[str, Any], max_tokens: int) -> dict[str, Any]:
    """One step: at most ``max_tokens``, ending at a blank line."""
    return {"max_tokens": max_tokens, **sampling(body), "stop": [STEP_DELIMITER]}


def client_cap(body: Mapping[str, Any]) -> int | None:
    """The client's ``max_completion_tokens`` or ``max_tokens``, if it set one."""
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    return cap if isinstance(cap, int) and cap > 0 else None


def capped(value: int, *caps: int | None) -> int:
    """``value``, lowered to every cap that is set."""
    return min([value, *(c for c in caps if c is not None)])


def thinking_caps(
    thinking: ThinkingBudget | None, token_budget: int, answer_tokens: int
) -> tuple[int, int]:
    """The steps are the thinking: a request's thinking budget caps the kept steps' tokens and
    the answer's (``X-TTC-Thinking-Budget`` / ``reasoning_effort``)."""
    if thinking is None:
        return token_budget, answer_tokens
    return min(token_budget, thinking.tokens), min(answer_tokens, thinking.answer_tokens)


@dataclass(frozen=True)
class Prompts:
    """Each role's rendering of the chat (its engine's template, generation prompt appended)."""

    small: str
    large: str

    @classmethod
    async def render(cls, sampler: Sampler, chat: list[dict[str, Any]]) -> Prompts:
        small = await sampler.render_chat(chat, "small")
        large = await sampler.render_chat(chat, "large")
        return cls(small, large)

    def of(self, role: RoleName) -> str:
        return self.small if role == "small" else self.large

    def step(self, role: RoleName, steps: list[str]) -> str:
        """The prompt that continues ``steps`` (no steps: the rendering alone)."""
        return self.of(role) + (joined(steps) if steps else "")

    def thinking(self) -> Prompts:
        """Each rendering with its thinking opened: ``<think>\\n`` appended unless the template
        already opened it (Qwen3 and the R1 distills' templates do)."""
        return Prompts(opened(self.small), opened(self.large))


def opened(rendered: str) -> str:
    return rendered if rendered.rstrip().endswith(THINK_OPEN) else rendered + THINK_OPEN + "\n"


def answer_prompt(opened_prompt: str, thinking: str) -> str:
    """The prompt of the final answer: the thinking closed, the answer's first line next."""
    return opened_prompt + thinking + "\n" + THINK_CLOSE + STEP_DELIMITER


def end_of_thinking(text: str) -> tuple[str, bool]:
    """``text`` up to the end-of-thinking tag, and whether it had one."""
    head, closed, _ = text.partition(THINK_CLOSE)
    return (head.rstrip(), True) if closed else (text, False)


def has_answer(text: str) -> bool:
    return any(marker in text for marker in ANSWER_MARKERS)


def entropy(top_logprobs: Mapping[str, float]) -> float | None:
    """H = -sum p log p (nats) over the top alternatives, their probabilities renormalised to
    sum to 1 (GlimpRouter's first-token entropy); None without alternatives."""
    if not top_logprobs:
        return None
    top = max(top_logprobs.values())
    weights = [math.exp(lp - top) for lp in top_logprobs.values()]
    total = math.fsum(weights)
    return max(0.0, -math.fsum(w / total * math.log(w / total) for w in weights if w > 0))


def joined(steps: list[str]) -> str:
    return STEP_DELIMITER.join(steps) + STEP_DELIMITER


def _or(value: Any, default: float) -> Any:
    return default if value is None else value


@dataclass
class Thinking:
    """The kept thinking: segments that end at a blank line, joined with ``STEP_DELIMITER``.
    ``keep`` adds text to the open segment and sends it to ``emit`` at once, so the pieces sent
    concatenate to ``text``; ``close`` ends the segment (a segment left empty is dropped)."""

    emit: Callable[[str], Awaitable[None]] | None = None
    segments: list[str] = field(default_factory=lambda: [""])
    tokens: int = 0  # every kept call's tokens

    @property
    def steps(self) -> list[str]:
        return [s for s in self.segments if s]

    @property
    def text(self) -> str:
        return STEP_DELIMITER.join(self.steps)

    @property
    def continued(self) -> str:
        """What the next call continues: the text, and the blank line of a closed segment."""
        text = self.text
        return text + STEP_DELIMITER if text and not self.segments[-1] else text

    async def keep(self, text: str, tokens: int) -> None:
        self.tokens += tokens
        if not text:
            return
        piece = STEP_DELIMITER + text if not self.segments[-1] and self.text else text
        self.segments[-1] += text
        if self.emit is not None:
            await self.emit(piece)

    def close(self) -> None:
        if self.segments[-1]:
            self.segments.append("")
