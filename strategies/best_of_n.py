"""``best_of_n``: best-of-N with an LLM judge, and Best-of-Majority (arXiv 2510.03199).

Best-of-N ("rm@k", Qwen2.5-Math ``rm_maj_eval.py::eval_rm_k_metrics``) scores every response and
returns the argmax, the first on ties. The reward here is an LLM-as-judge on the ``judge`` pool,
scored as SpecReason scores its verifier (Pan et al., arXiv 2504.07891,
ruipeterpan/specreason@8c5ee05 ``spec_reason.py``): one token at temperature
0 with the top-10 logprobs, read as the probability-weighted mean of the digit tokens.

Best-of-Majority (Di, Ji, Li, Zhao, Gu, arXiv 2510.03199) first keeps only the answers whose
empirical frequency reaches ``alpha``, then takes the best-scored response among them::

    samples = sample(prompt, k)                           # one request with n=k
    for s in finished_in_order(samples):
        score[s] = judge(prompt, s)                       # launched as s finishes, concurrently
    pool = finished samples
    if alpha > 0:                                         # Best-of-Majority
        freq = count(answer(s)) / len(pool)               # unparseable answers never pass
        pool = [s in pool if freq[answer(s)] >= alpha] or pool
    return argmax(score[s] for s in pool)                 # ties: the one that finished first

Plain best-of-N needs no answer, so responses without one compete there; a failed or unreadable
judge call scores 0 (SpecReason's "reject").
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from typing import Any

from strategies.base import (
    ParameterSpec,
    StrategyOutcome,
    StrategySpec,
    StrategyTask,
    TokenBound,
    samples_bound,
)
from strategies.judging import expected_digit, sampled_digit
from strategies.sampling import (
    BudgetExhausted,
    SampleBook,
    Sampler,
    SampleRequest,
    SampleState,
    finish_order,
)
from strategies.selection import K_DESCRIPTION, tally_votes, vote_of

# SpecReason's verifier call: one greedy token, with the top-10 alternatives to average over.
JUDGE_PARAMS: dict[str, Any] = {
    "temperature": 0,
    "max_tokens": 1,
    "logprobs": True,
    "top_logprobs": 10,
}

JUDGE_INSTRUCTION = (
    "Evaluate the response above to the user's request solely based on its factual correctness "
    "and logical validity. Ignore style, phrasing, or length; only judge whether the response "
    "is objectively correct and its reasoning follows. Assign a score from 0 (wrong) to 9 "
    "(certainly correct). Reply with the single digit only."
)


def judge_request(messages: Sequence[Mapping[str, Any]] | None, candidate: str) -> SampleRequest:
    """The judge's prompt for one candidate: the conversation, the response, the instruction."""
    conversation = "\n\n".join(
        f"[{message.get('role', 'user')}]\n{_content_text(message.get('content'))}"
        for message in messages or ()
    )
    content = (
        f"Conversation:\n{conversation}\n\n"
        f"Response to evaluate:\n{candidate}\n\n"
        f"{JUDGE_INSTRUCTION}"
    )
    return SampleRequest(messages=[{"role": "user", "content": content}], params=JUDGE_PARAMS)


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def judge_score(sampled: str, top_logprobs: Mapping[str, float]) -> float:
    """SpecReason's ``average`` score, falling back to ``greedy``: the expected digit under the
    top alternatives; else the sampled token if it is a digit; else 0."""
    grade = expected_digit(top_logprobs)
    if grade is None:
        grade = sampled_digit(sampled)
    return grade or 0.0


async def _judge(
    sampler: Sampler, messages: Sequence[Mapping[str, Any]] | None, candidate: str
) -> float | None:
    """One judge call; None when the request's budget ran out before it answered."""
    batch = await sampler.start(judge_request(messages, candidate), 1, "judge")
    book = SampleBook(1)
    first_top: dict[str, float] | None = None
    try:
        async with aclosing(batch.events()) as events:
            async for delta in events:
                book.record(delta)
                if first_top is None and delta.top_logprobs:
                    first_top = delta.top_logprobs[0]
    except BudgetExhausted:
        return None
    return judge_score(book.samples[0].text, first_top or {})


def _pick(candidates: list[SampleState], scores: Mapping[int, float]) -> SampleState:
    """The best-scored candidate; on ties the earliest in the list (finish order)."""
    best = candidates[0]
    for candidate in candidates[1:]:
        if scores[candidate.index] > scores[best.index]:
            best = candidate
    return best


async def run(task: StrategyTask) -> StrategyOutcome:
    k, alpha = task.params["k"], task.params["alpha"]
    judging: dict[int, asyncio.Task[float | None]] = {}
    try:
        async with finish_order(task.sampler, task.request, k, task.role) as samples:
            async for sample in samples:  # each candidate is judged as soon as it finishes
                if sample.finish_reason in ("stop", "length"):
                    judging[sample.index] = asyncio.create_task(
                        _judge(task.sampler, task.request.messages, sample.text)
                    )
        book, truncated = samples.book, samples.truncated
        judged = await asyncio.gather(*judging.values())
    finally:  # an error or a cancellation: stop the judge calls still running
        for pending in judging.values():
            pending.cancel()
        await asyncio.gather(*judging.values(), return_exceptions=True)
    truncated = truncated or any(score is None for score in judged)
    scores = {i: score or 0.0 for i, score in zip(judging, judged, strict=True)}
    task.decided()

    candidates = [book.samples[i] for i in book.finish_order if i in scores]
    if not candidates:  # nothing finished within the budget
        fallback = book.first_finished() or book.longest()
        return StrategyOutcome(
            content=fallback.text,
            reasoning=fallback.reasoning,
            finish_reason="length",
            winner=fallback.index,
            truncated=truncated,
            report={"scores": [], "no_candidate": True},
        )
    tally = await tally_votes(candidates, task.answers)
    keys = {s.index: await vote_of(s, task.answers) for s in candidates}
    eligible = candidates
    if alpha > 0:
        frequent = {key for key, n in tally.counts.items() if n / len(candidates) >= alpha}
        eligible = [s for s in candidates if keys[s.index] in frequent] or candidates
    winner = _pick(eligible, scores)
    return StrategyOutcome(
        content=winner.text,
        reasoning=winner.reasoning,
        finish_reason=winner.finish_reason
        if winner.finish_reason in ("stop", "length")
        else "length",
        winner=winner.index,
        answer=keys[winner.index],
        votes=dict(tally.counts),
        truncated=truncated,
        report={
            "scores": [
                {"sample": s.index, "score": round(scores[s.index], 4), "answer": keys[s.index]}
                for s in candidates
            ],
            "eligible": [s.index for s in eligible],
            **({"bom_fallback": True} if alpha > 0 and eligible is candidates else {}),
        },
    )


def worst_case(params: dict[str, Any], prompt_tokens: int, max_tokens: int) -> TokenBound:
    """k samples, then one judge call per sample: the conversation, the candidate and the
    instruction in (its UTF-8 length bounds its tokens), one token out."""
    k = params["k"]
    samples = samples_bound(k, prompt_tokens, max_tokens)
    judge_prompt = prompt_tokens + max_tokens + len(JUDGE_INSTRUCTION.encode()) + 64
    return TokenBound(samples.prompt_tokens + k * judge_prompt, samples.completion_tokens + k)


SPEC = StrategySpec(
    name="best_of_n",
    summary="k samples scored 0-9 by an LLM judge; the best wins (Best-of-Majority with alpha)",
    source="Best-of-N (Qwen2.5-Math rm@k); judge scoring of SpecReason, arXiv 2504.07891; "
    "Best-of-Majority, Di et al. 2025, arXiv 2510.03199",
    parameters=(
        ParameterSpec("k", int, 4, K_DESCRIPTION, minimum=1, maximum=64),
        ParameterSpec(
            "alpha",
            float,
            0.0,
            "Best-of-Majority: only answers with at least this share of the samples compete "
            "(0: plain best-of-n)",
            minimum=0,
            maximum=1,
        ),
    ),
    run=run,
    worst_case=worst_case,
)
