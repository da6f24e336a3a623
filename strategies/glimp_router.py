"""``glimp_router``: GlimpRouter (Zeng et al., arXiv 2601.05110; Zengwh02/GlimpRouter@686838e
``src/glimp_router.py``).

Before each reasoning step the small model "glimpses" its first token; the entropy of that
token's distribution says how uncertain the step is, and an uncertain step is written by the
large model. The large model then writes the answer after the thinking::

    steps = []; used = 0
    loop:
        g = gen(SMALL, steps, max_tokens=1, temperature=0, logprobs=20)    # the glimpse
        H = -sum(p * log p) over g's top 20, renormalised                 # nats
        writer = LARGE if H >= threshold else SMALL
        s = gen(writer, steps)          # the glimpse token is discarded; <= step_tokens,
        steps.append(s); used += tokens(s)                              # stop "\\n\\n"
        stop if "</think>" in s, s repeats the previous step, the model ended (EOS),
        used >= token_budget or len(steps) == max_steps
    answer = gen(LARGE, "<think>\\n" + "\\n\\n".join(steps) + "\\n</think>\\n\\n",
                 max_tokens=answer_tokens)

Every call is a raw completion on the chat as each role's engine renders it, thinking opened
(``strategies/steps.py``): ``gen(role, steps)`` continues ``render(role) + "<think>\\n" +
"\\n\\n".join(steps) + "\\n\\n"`` with temperature/top_p from the request or 0.6/0.95; the
glimpse continues the same text, so the small model's step after it hits its prefix cache.

Where this differs from the authors' code, and why:

- The thinking is opened with ``<think>\\n`` (theirs: ``<think>``) and not at all when the
  template already opened it (Qwen3's and the R1 distills' templates end with ``<think>\\n``):
  their first step, rendered by the template, and later steps, prefilled by hand, differed.
- The model ending (EOS) stops too (over chat they would send the next step and stop at the
  repeated empty one), and a repeat stops from the second step on (theirs: the third).
- A step is cut at the ``token_budget`` left (``max_tokens``), so the thinking never passes it.
- A glimpse without top log-probabilities (an engine that does not return them) sends the
  step to the large model, and reports the entropy as None.
- Their ``first_n_steps_base_model`` (0 in their runs) is not offered.
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
    entropy,
    sampling,
    step_params,
    thinking_caps,
)

STICKY_KEY = "glimp_router"  # one key per role's pool: the sampler keys by (pool, key)
GLIMPSE = {"max_tokens": 1, "temperature": 0.0, "logprobs": 20}


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

    async def gen(role: RoleName, params: dict[str, Any]) -> Call:
        """``role`` continues the thinking so far."""
        prompt = prompts.of(role) + thinking.continued
        return await complete(sampler, role, prompt, params, STICKY_KEY)

    steps: list[dict[str, Any]] = []
    stopped, truncated, last = "max_steps", False, None
    answer: Call | None = None
    try:
        while True:
            if thinking.tokens >= budget:
                stopped = "token_budget"
                break
            if len(steps) >= p["max_steps"]:
                stopped = "max_steps"
                break
            glimpse = await gen("small", GLIMPSE)
            h = entropy(glimpse.top_logprobs or {})
            writer: RoleName = "large" if h is None or h >= p["threshold"] else "small"
            room = min(p["step_tokens"], budget - thinking.tokens)
            step = await gen(writer, step_params(body, room))
            if step.failed:
                stopped, truncated = "error", True
                break
            text, closed = end_of_thinking(step.text)
            steps.append(
                {
                    "by": writer,
                    "entropy": None if h is None else round(h, 4),
                    "glimpse_tokens": glimpse.tokens,
                    "tokens": step.tokens,
                    "text": text,
                }
            )
            await thinking.keep(text, step.tokens)
            thinking.close()
            if closed:
                stopped = "end_of_thinking"
            elif step.ended:
                stopped = "eos"
            elif text == last:
                stopped = "repeated_step"
            else:
                last = text
                continue
            break
        answer = await complete(
            sampler,
            "large",
            answer_prompt(prompts.large, thinking.text),
            {"max_tokens": answer_tokens, **sampling(body)},
            STICKY_KEY,
        )
    except BudgetExhausted as exc:
        stopped, truncated = f"budget_{exc.reason}", True
    content = answer.text if answer is not None else ""
    if content and task.on_text is not None:
        await task.on_text(content)
    task.decided()
    by = [s["by"] for s in steps]
    decisions = {"small": by.count("small"), "large": by.count("large")}
    return StrategyOutcome(
        content=content,
        reasoning=thinking.text,
        thinking_tokens=thinking.tokens,
        finish_reason="stop" if answer is not None and answer.finish_reason == "stop" else "length",
        answer=extract_answer(content) if content else None,
        truncated=truncated or answer is None or answer.failed,
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
    """Every step glimpsed (one token) and written; each call re-sends the prompt and the kept
    steps (at most ``token_budget``), then the answer after them."""
    steps, step = params["max_steps"], params["step_tokens"]
    context = prompt_tokens + params["token_budget"] + len(THINK_OPEN + THINK_CLOSE) + 8
    return TokenBound(
        prompt_tokens=(2 * steps + 1) * context,
        completion_tokens=steps * (1 + step) + params["answer_tokens"],
    )


SPEC = StrategySpec(
    name="glimp_router",
    summary="the small model glimpses each reasoning step's first token; when its entropy is "
    "high the large model writes the step; the large model writes the answer after the "
    "thinking (needs pools with the small and large roles on llama.cpp or vLLM)",
    source="Zeng et al. 2026, GlimpRouter, arXiv 2601.05110",
    parameters=(
        ParameterSpec(
            "threshold",
            float,
            1.0,
            "The large model writes a step iff the glimpse's entropy (nats) >= this",
            0,
            10,
        ),
        ParameterSpec("step_tokens", int, 512, "Token cap of one step", 1, 4096),
        ParameterSpec(
            "token_budget", int, 8192, "Stop once the kept steps hold this many tokens", 1, 131072
        ),
        ParameterSpec("max_steps", int, 64, "Most steps", 1, 1024),
        ParameterSpec("answer_tokens", int, 2048, "Token cap of the final answer", 1, 32768),
    ),
    run=run,
    worst_case=worst_case,
)
