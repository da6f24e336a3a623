"""``single``: pass the request through to one worker, unchanged. The default strategy.

The gateway forwards the body (``n`` included) to the least-loaded healthy worker serving the
model, relays its answer, and counts its tokens.

With a thinking budget the gateway enforces itself (``X-TTC-Thinking-Budget``,
``reasoning_effort``), the one sample is drawn through the sampler instead, which ends its
thinking at the budget and continues its answer (``SAMPLED_SINGLE``)::

    sample = sample(prompt, 1)                        # thinking cut at t, answer continued
    return sample
"""

from __future__ import annotations

from strategies.base import StrategyOutcome, StrategySpec, StrategyTask
from strategies.sampling import finish_order

SINGLE = StrategySpec(
    name="single",
    summary="Pass-through: one worker answers the request as it is.",
    source="-",
)


async def run_one(task: StrategyTask) -> StrategyOutcome:
    """One sample, its thinking and answer apart: what ``single`` is under a thinking budget."""
    async with finish_order(task.sampler, task.request, 1, task.role) as samples:
        async for _ in samples:
            pass
    task.decided()
    sample = samples.book.samples[0]
    return StrategyOutcome(
        content=sample.text,
        reasoning=sample.reasoning,
        finish_reason=sample.finish_reason
        if sample.finish_reason in ("stop", "length")
        else "length",
        winner=0,
        truncated=samples.truncated,
    )


SAMPLED_SINGLE = StrategySpec(name=SINGLE.name, summary=SINGLE.summary, source="-", run=run_one)
