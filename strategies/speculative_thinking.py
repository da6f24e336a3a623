"""``speculative_thinking``: Speculative Thinking (Yang, Yue, Chaudhary, Han, arXiv 2504.12329;
uservan/speculative_thinking@98310f3 ``speculative/speculative_vllm.py``,
``speculative/config/1b_32b.yml``).

The small model thinks, paragraph by paragraph. At each paragraph break it drafts a few tokens;
when they sound like reflection ("wait", "hold on", "verify"...) or a conclusion ("yes",
"final answer"...) the large model writes those tokens instead, since reflection and wrap-up
are where small models go wrong; after many doubtful paragraphs the large model recaps::

    thinking = ""; negatives = 0; recap = recap_tokens; recap_after = recap_after_negative
    loop:
        thinking += gen(SMALL, thinking)               # <= step_tokens, stop "\\n\\n"
        stop at "</think>", an answer marker, EOS, kept tokens >= token_budget
        if it stopped at max_tokens: continue          # no paragraph break yet
        thinking += "\\n\\n"; stop once max_steps paragraphs were written
        if negatives >= recap_after:                   # a recap
            thinking += "Let me check whether there are some wrong steps:"
            thinking += gen(LARGE, thinking, recap)
            negatives = 0; recap = min(recap + 25, 200); recap_after = min(recap_after + 5, 30)
            continue
        s = gen(SMALL, thinking, probe_tokens)         # the probe
        if sentiment(s) == 0: continue                 # neutral: discarded, SMALL goes on
        t = gen(LARGE, thinking, probe_tokens)
        kept = t if choose_large or sentiment(s) < 0 <= sentiment(t)
                                 or sentiment(s) > 0 > sentiment(t) else s
        thinking += kept
        if sentiment(kept) < 0: negatives += 1
        if kept holds a verify word: thinking += gen(LARGE, thinking, recap_tokens)
    answer = gen(LARGE, "<think>\\n" + thinking + "\\n</think>\\n\\n", max_tokens=answer_tokens)

``sentiment`` counts, in the lower-cased text, the occurrences of the positive words against
those of the negative and verify words: +1 if more positive, -1 if more negative or equally
many (but some), 0 if none. ``gen`` is a raw completion continuing the chat as each role's
engine renders it, thinking opened (``strategies/steps.py``), with temperature/top_p from the
request or 0.6/0.95; a paragraph is one reported step, and the reasoning is the paragraphs
joined with "\\n\\n".

Where this differs from the authors' code, and why:

- The neutral probe: discarded, SMALL continuing from the paragraph break, as the reference
  says; so does their code (a neutral probe's tokens are never appended). Not in the
  reference: ``negatives`` counts paragraphs whose *kept* text is negative (LARGE's under
  ``choose_large``), not SMALL's probe; and the large model's continuation after a verify word
  is always ``recap_tokens`` long (their ``original_recap_token_num``), not the grown recap.
- Their thinking and answer are one stream that runs to EOS (or ``max_tokens`` counted with
  the prompt); here the thinking stops at ``</think>``, an answer marker or the budgets, and
  the large model writes the answer (GlimpRouter's answer phase), so the answer is never the
  small model's and a thinking budget can end the thinking.
- Calls are cut at the ``token_budget`` left, so the kept thinking never passes it.
- ``top_k`` 50 is not sent (not an OpenAI field); ``begin`` (false in their configurations)
  and ``help_think_word`` (null) are not offered; a paragraph with no break within
  ``step_tokens`` is continued by SMALL without a probe, as their 1024-token calls are.
"""

from __future__ import annotations

from typing import Any

from strategies.answers import extract_answer
from strategies.base import (
    ParameterSpec,
    StrategyOutcome,
    StrategySpec,
    StrategyTask,
    TokenBound,
)
from strategies.sampling import BudgetExhausted, RoleName
from strategies.steps import (
    THINK_CLOSE,
    THINK_OPEN,
    Call,
    Prompts,
    Thinking,
    answer_prompt,
    capped,
    client_cap,
    complete,
    end_of_thinking,
    has_answer,
    sampling,
    step_params,
    thinking_caps,
)

STICKY_KEY = "speculative_thinking"  # one key per role's pool: the sampler keys by (pool, key)
POSITIVE = ("yeah", "yes", "final answer", "confident")
NEGATIVE = ("wait", "alternatively", "hold on", "another")
VERIFY = ("verify", "think again", "recap", "check")
RECAP_WORDS = "Let me check whether there are some wrong steps:"
RECAP_GROWTH, MAX_RECAP_TOKENS = 25, 200  # add_each_recap, max_recap_token_num
NEGATIVE_GROWTH, MAX_NEGATIVE = 5, 30  # add_each_neg, max_negative_num


def sentiment(text: str) -> int:
    """+1 positive, -1 negative (or as many negative as positive words, some), 0 neutral."""
    text = text.lower()
    positive = sum(text.count(word) for word in POSITIVE)
    negative = sum(text.count(word) for word in NEGATIVE + VERIFY)
    if positive != negative:
        return 1 if positive > negative else -1
    return -1 if positive else 0


def verifies(text: str) -> bool:
    text = text.lower()
    return any(word in text for word in VERIFY)


def _grown(value: int, growth: int, ceiling: int) -> int:
    return max(value, min(value + growth, ceiling))  # a value set above the ceiling stays


async def run(task: StrategyTask) -> StrategyOutcome:
    p = task.params
    body = task.request.params
    cap = client_cap(body)
    budget, answer_tokens = thinking_caps(
        task.request.thinking, capped(p["token_budget"], cap), capped(p["answer_tokens"], cap)
    )
    sampler = task.sampler
    prompts = (await Prompts.render(sampler, list(task.request.messages or []))).thinking()
    thinking = Thinking(emit=task.on_reasoning)

    async def gen(role: RoleName, max_tokens: int, stop: bool = False) -> Call:
        """``role`` continues the thinking so far, cut at the budget left."""
        room = min(max_tokens, budget - thinking.tokens)
        params = step_params(body, room) if stop else {"max_tokens": room, **sampling(body)}
        prompt = prompts.of(role) + thinking.continued
        return await complete(sampler, role, prompt, params, STICKY_KEY)

    steps: list[dict[str, Any]] = []

    def paragraph(by: str, small: int | None = None, large: int | None = None) -> dict[str, Any]:
        """A new paragraph in the report: who began it, its probes' sentiments, its kept
        tokens and text, and ``probe_tokens``, what was written but not kept."""
        steps.append(
            {
                "by": by,
                "sentiment": small,
                "large_sentiment": large,
                "verify": False,
                "tokens": 0,
                "probe_tokens": 0,
                "text": "",
            }
        )
        return steps[-1]

    async def keep(call: Call, step: dict[str, Any]) -> str | None:
        """Add ``call``'s text to the thinking; why the thinking stops, if it does."""
        if call.failed:
            return "error"
        text, closed = end_of_thinking(call.text)
        await thinking.keep(text, call.tokens)
        step["tokens"] += call.tokens
        step["text"] += text
        if closed:
            return "end_of_thinking"
        if has_answer(text):
            return "answer"
        if call.ended:
            return "eos"
        return "token_budget" if thinking.tokens >= budget else None

    negatives, recap, recap_after = 0, p["recap_tokens"], p["recap_after_negative"]
    stopped: str | None = None
    answer: Call | None = None
    try:
        if budget <= 0:
            stopped = "token_budget"
        else:
            step = paragraph("small")
        while stopped is None:
            call = await gen("small", p["step_tokens"], stop=True)
            if (stopped := await keep(call, step)) is not None:
                break
            if call.finish_reason == "length":
                continue  # no paragraph break yet: SMALL goes on
            thinking.close()
            if len(steps) >= p["max_steps"]:
                stopped = "max_steps"
                break
            if negatives >= recap_after:
                step = paragraph("recap")
                step["text"] = RECAP_WORDS
                await thinking.keep(RECAP_WORDS, 0)
                stopped = await keep(await gen("large", recap), step)
                negatives = 0
                recap = _grown(recap, RECAP_GROWTH, MAX_RECAP_TOKENS)
                recap_after = _grown(recap_after, NEGATIVE_GROWTH, MAX_NEGATIVE)
                continue
            probe = await gen("small", p["probe_tokens"])
            if probe.failed:
                stopped = "error"
                break
            if (small := sentiment(probe.text)) == 0:
                step = paragraph("small", small)
                step["probe_tokens"] = probe.tokens
                continue  # neutral: discarded, SMALL goes on from the break
            target = await gen("large", p["probe_tokens"])
            large = sentiment(target.text)
            use_large = p["choose_large"] or small < 0 <= large or small > 0 > large
            kept, dropped, final = (target, probe, large) if use_large else (probe, target, small)
            step = paragraph("large" if use_large else "small", small, large)
            step["probe_tokens"] = dropped.tokens
            if final < 0:
                negatives += 1
            if (stopped := await keep(kept, step)) is not None:
                break
            if verifies(kept.text):
                step["verify"] = True
                stopped = await keep(await gen("large", p["recap_tokens"]), step)
        answer = await complete(
            sampler,
            "large",
            answer_prompt(prompts.large, thinking.text),
            {"max_tokens": answer_tokens, **sampling(body)},
            STICKY_KEY,
        )
    except BudgetExhausted as exc:
        stopped = f"budget_{exc.reason}"
    content = answer.text if answer is not None else ""
    if content and task.on_text is not None:
        await task.on_text(content)
    task.decided()
    by = [s["by"] for s in steps]
    decisions = {
        "small": by.count("small"),
        "large": by.count("large"),
        "recap": by.count("recap"),
        "verify": sum(s["verify"] for s in steps),
    }
    return StrategyOutcome(
        content=content,
        reasoning=thinking.text,
        thinking_tokens=thinking.tokens,
        finish_reason="stop" if answer is not None and answer.finish_reason == "stop" else "length",
        answer=extract_answer(content) if content else None,
        truncated=stopped == "error" or answer is None or answer.failed,
        report={
            "steps": steps,
            **decisions,
            "kept_tokens": thinking.tokens,
            "answer_tokens": answer.tokens if answer is not None else 0,
            "stopped": stopped,
        },
        decisions=decisions,
    )


def worst_case(params: dict[str, Any], prompt_tokens: int, max_tokens: int) -> TokenBound:
    """Per paragraph: SMALL's text, both probes and the longest recap; a paragraph without a
    break costs a call per ``step_tokens`` kept, at most ``token_budget`` of them in all. Each
    call re-sends the prompt and the thinking (at most ``token_budget``), then the answer."""
    step, probe = params["step_tokens"], params["probe_tokens"]
    recap = max(MAX_RECAP_TOKENS, params["recap_tokens"])
    calls = params["max_steps"] + params["token_budget"] // step + 1  # SMALL's text calls
    context = (
        prompt_tokens + params["token_budget"] + len(THINK_OPEN + THINK_CLOSE + RECAP_WORDS) + 8
    )
    return TokenBound(
        prompt_tokens=(4 * calls + 1) * context,
        completion_tokens=calls * (step + 2 * probe + recap) + params["answer_tokens"],
    )


SPEC = StrategySpec(
    name="speculative_thinking",
    summary="the small model thinks paragraph by paragraph; where a paragraph starts with "
    "reflection or a conclusion the large model writes it, and recaps after many doubtful "
    "ones; the large model writes the answer after the thinking (needs pools with the small "
    "and large roles on llama.cpp or vLLM)",
    source="Yang et al. 2025, Speculative Thinking, arXiv 2504.12329",
    parameters=(
        ParameterSpec(
            "probe_tokens", int, 20, "Tokens each model drafts at a paragraph break", 1, 256
        ),
        ParameterSpec(
            "choose_large", bool, True, "Keep the large model's probe whenever it writes one"
        ),
        ParameterSpec("recap_tokens", int, 125, "Tokens of the large model's first recap", 1, 1024),
        ParameterSpec(
            "recap_after_negative",
            int,
            15,
            "Negative paragraphs before the large model recaps",
            1,
            1024,
        ),
        ParameterSpec("step_tokens", int, 1024, "Token cap of one small-model call", 1, 4096),
        ParameterSpec(
            "token_budget",
            int,
            8192,
            "Stop once the kept thinking holds this many tokens",
            1,
            131072,
        ),
        ParameterSpec("max_steps", int, 128, "Most paragraphs", 1, 4096),
        ParameterSpec("answer_tokens", int, 2048, "Token cap of the final answer", 1, 32768),
    ),
    run=run,
    worst_case=worst_case,
)
