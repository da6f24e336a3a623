"""``spec_reason``: SpecReason (Pan et al., arXiv 2504.07891; ruipeterpan/specreason@8c5ee05).

The small model drafts each reasoning step; the large model grades the draft with one token and
writes the step itself only when the grade is below the threshold::

    steps = []; used = 0
    loop:
        if len(steps) < first_n_base:
            s = gen(LARGE, steps)                         # the first steps come from LARGE
        else:
            s = gen(SMALL, steps)                         # <= step_tokens, stop "\\n\\n"
            if score(LARGE, steps + [s]) < threshold:     # one token, temperature 0
                s = gen(LARGE, steps)                     # discard the draft, regenerate
        steps.append(s); used += tokens(s)
        stop if s holds an answer marker ("boxed", "Answer:", ...), the model ended (EOS, or
        an empty step where the engine does not say), s repeats the previous step,
        len(steps) == max_steps, or used >= token_budget

Over the API (``strategies/steps.py``) every call is a raw ``/v1/completions`` on a
prompt rendered once per role by that role's engine, so no chat template can drop or move the
steps, and every call of a role stays on one worker (``sticky_key``) to hit its prefix cache:

- ``gen(role, steps)``: ``render(role, chat)`` + ``"\\n\\n".join(steps) + "\\n\\n"`` (no steps:
  the rendering alone), ``stop ["\\n\\n"]``, temperature/top_p from the request or 0.6/0.95.
- ``score``: LARGE's rendering of ``chat + [assistant: steps + draft, user: VERIFY_QUESTION]``
  followed by ``"I think the quality score is: "``; ``max_tokens 1, temperature 0,
  logprobs 10``. ``greedy``: the sampled token if it is a digit, else 0 (reject). ``average``:
  the digit tokens among the top 10, probabilities renormalised, score = sum(digit * p).

The answer is the steps joined with ``"\\n\\n"`` (the answer-bearing step is the last one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from strategies.answers import extract_answer
from strategies.base import (
    ParameterSpec,
    StrategyOutcome,
    StrategySpec,
    StrategyTask,
    TokenBound,
)
from strategies.judging import expected_digit, sampled_digit
from strategies.sampling import BudgetExhausted, RoleName, Sampler
from strategies.steps import (
    STEP_DELIMITER,
    Call,
    Prompts,
    capped,
    client_cap,
    complete,
    has_answer,
    joined,
    step_params,
)

VERIFY_QUESTION = (
    "Evaluate the last reasoning step solely based on factual correctness and logical validity. "
    "Ignore style, phrasing, or overall usefulness—only judge whether the step is objectively "
    "correct and logically follows from prior steps. Assign a score from 0 to 9."
)
SCORE_PREFIX = "I think the quality score is: "
STICKY_KEY = "spec_reason"  # one key per role's pool: the sampler keys by (pool, key)
# Stands in for the steps while the verifier chat is rendered once; replaced per step.
_STEPS_SLOT = "@@SPEC_REASON_STEPS@@"


def score(call: Call, method: str) -> float:
    """The verifier's grade: the sampled digit (``greedy``) or the expected digit under the
    renormalised top-k (``average``); 0 when there is no digit."""
    if method == "average":
        return expected_digit(call.top_logprobs or {}) or 0.0
    return sampled_digit(call.text) or 0.0


@dataclass
class Verifier:
    """LARGE's verifier prompt, rendered once around a slot for the steps."""

    head: str | None  # None: the template altered the slot; render per step instead
    tail: str
    chat: list[dict[str, Any]]

    @classmethod
    async def render(cls, sampler: Sampler, chat: list[dict[str, Any]]) -> Verifier:
        verifier = await sampler.render_chat(_verifier_chat(chat, _STEPS_SLOT), "large")
        head, slot, tail = verifier.partition(_STEPS_SLOT)
        clean = bool(slot) and _STEPS_SLOT not in tail
        return cls(head if clean else None, tail, chat)

    async def prompt(self, sampler: Sampler, steps: list[str]) -> str:
        if self.head is not None:
            return self.head + joined(steps) + self.tail + SCORE_PREFIX
        rendered = await sampler.render_chat(_verifier_chat(self.chat, joined(steps)), "large")
        return rendered + SCORE_PREFIX


def _verifier_chat(chat: list[dict[str, Any]], steps_text: str) -> list[dict[str, Any]]:
    # No "</think>" after the steps: some templates drop the thinking of earlier turns.
    return [
        *chat,
        {"role": "assistant", "content": steps_text},
        {"role": "user", "content": VERIFY_QUESTION},
    ]


@dataclass
class Trace:
    """The kept steps and, per step, who wrote it and how its draft was graded."""

    steps: list[str] = field(default_factory=list)
    report: list[dict[str, Any]] = field(default_factory=list)
    used: int = 0

    def summary(self, stopped: str) -> dict[str, Any]:
        drafted = [r for r in self.report if r["accepted"] is not None]
        accepted = sum(1 for r in drafted if r["accepted"])
        return {
            "steps": self.report,
            "accepted": accepted,
            "rejected": len(drafted) - accepted,
            "kept_tokens": self.used,
            "stopped": stopped,
        }


async def run(task: StrategyTask) -> StrategyOutcome:
    p = task.params
    body = task.request.params
    thinking = task.request.thinking  # the steps are the thinking: its budget caps them
    budget = capped(p["token_budget"], client_cap(body), thinking.tokens if thinking else None)
    step = step_params(body, p["step_tokens"])
    score_params = {"max_tokens": 1, "temperature": 0.0, "logprobs": 10}
    emit = task.on_text  # streams kept steps as they are kept
    sampler = task.sampler
    chat = list(task.request.messages or [])
    prompts = await Prompts.render(sampler, chat)
    verifier_prompts = await Verifier.render(sampler, chat)

    async def gen(role: RoleName, prompt: str, params: dict[str, Any]) -> Call:
        return await complete(sampler, role, prompt, params, STICKY_KEY)

    trace = Trace()
    stopped = "max_steps"
    truncated = False
    try:
        while len(trace.steps) < p["max_steps"]:
            steps = trace.steps
            entry: dict[str, Any]
            if len(steps) < p["first_n_base"]:
                kept = await gen("large", prompts.step("large", steps), step)
                entry = {"by": "large", "score": None, "accepted": None}
            else:
                draft = await gen("small", prompts.step("small", steps), step)
                grade = 0.0
                if not draft.failed:
                    verifier = await gen(
                        "large",
                        await verifier_prompts.prompt(sampler, [*steps, draft.text]),
                        score_params,
                    )
                    grade = score(verifier, p["score_method"])
                entry = {"by": "small", "score": round(grade, 4), "accepted": True}
                kept = draft
                if grade < p["threshold"]:
                    kept = await gen("large", prompts.step("large", steps), step)
                    entry.update(by="large", accepted=False, draft_tokens=draft.tokens)
                elif "</think>" in kept.text and not has_answer(kept.text):
                    kept.text = kept.text.replace("</think>", "")
            if kept.failed:
                stopped, truncated = "error", True
                break
            if kept.ended and not kept.text.strip():
                stopped = "eos"
                break
            steps.append(kept.text)
            trace.used += kept.tokens
            trace.report.append({**entry, "tokens": kept.tokens})
            if emit is not None:
                await emit(kept.text if len(steps) == 1 else STEP_DELIMITER + kept.text)
            if has_answer(kept.text):
                stopped = "answer"
            elif kept.ended:
                stopped = "eos"
            elif len(steps) >= 2 and steps[-1] == steps[-2]:
                stopped = "repeated_step"
            elif trace.used >= budget:
                stopped = "token_budget"
            else:
                continue
            break
    except BudgetExhausted as exc:
        stopped, truncated = f"budget_{exc.reason}", True
    task.decided()
    content = STEP_DELIMITER.join(trace.steps)
    natural = stopped in ("answer", "eos", "repeated_step")
    return StrategyOutcome(
        content=content,
        finish_reason="stop" if natural else "length",
        answer=extract_answer(content) if content else None,
        truncated=truncated,
        report=(summary := trace.summary(stopped)),
        decisions={"accepted": summary["accepted"], "rejected": summary["rejected"]},
    )


def worst_case(params: dict[str, Any], prompt_tokens: int, max_tokens: int) -> TokenBound:
    """Every step drafted, scored (one token) and rewritten; each call re-sends the prompt, the
    kept steps (at most ``token_budget`` plus one step) and, for scoring, the verifier turn."""
    steps, step = params["max_steps"], params["step_tokens"]
    context = prompt_tokens + params["token_budget"] + step
    verifier = len((VERIFY_QUESTION + SCORE_PREFIX).encode()) + 64
    return TokenBound(
        prompt_tokens=steps * (3 * context + step + verifier),
        completion_tokens=steps * (2 * step + 1),
    )


SPEC = StrategySpec(
    name="spec_reason",
    summary="small model drafts each reasoning step, large model grades it and rewrites "
    "rejected steps (needs pools with the small and large roles on llama.cpp or vLLM)",
    source="Pan et al. 2025, SpecReason, arXiv 2504.07891",
    parameters=(
        ParameterSpec("threshold", float, 7.0, "Accept a draft step iff its score >= this", 0, 9),
        ParameterSpec(
            "score_method",
            str,
            "greedy",
            "greedy: the verifier's digit; average: expected digit over its top-10",
            choices=("greedy", "average"),
        ),
        ParameterSpec("step_tokens", int, 512, "Token cap of one step", 1, 512),
        ParameterSpec(
            "token_budget", int, 8192, "Stop once the kept steps hold this many tokens", 1, 131072
        ),
        ParameterSpec("max_steps", int, 64, "Most steps", 1, 1024),
        ParameterSpec("first_n_base", int, 0, "First steps written by the large model", 0, 1024),
    ),
    run=run,
    worst_case=worst_case,
)
