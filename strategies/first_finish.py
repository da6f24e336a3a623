"""``first_finish``: First Finish Search (Agarwal et al., 2025, arXiv 2505.18149).

Launch k samples and return the first one that finishes *with an answer*; abort the rest::

    for sample in finished_in_order(sample(prompt, k)):
        if sample.stopped_naturally and extract(sample) is not None:
            cancel(all others); return sample         # shorter traces are more often right
    return first finished sample                      # none had an answer

A sample cut by ``max_tokens`` (``finish_reason="length"``) has not finished its reasoning, so
it is not a finish.
"""

from __future__ import annotations

from strategies.answers import answer_key
from strategies.base import ParameterSpec, StrategyOutcome, StrategySpec, StrategyTask
from strategies.sampling import finish_order
from strategies.selection import K_DESCRIPTION


async def run(task: StrategyTask) -> StrategyOutcome:
    k = task.params["k"]
    async with finish_order(task.sampler, task.request, k, task.role) as samples:
        async for sample in samples:
            answer = answer_key(sample.text) if sample.ended_naturally else None
            if answer is not None:
                task.decided()
                await samples.stop()
                return StrategyOutcome(
                    content=sample.text,
                    reasoning=sample.reasoning,
                    finish_reason="stop",
                    winner=sample.index,
                    answer=answer,
                    votes={answer: 1},
                )
    task.decided()
    fallback = samples.book.first_finished() or samples.book.longest()
    return StrategyOutcome(
        content=fallback.text,
        reasoning=fallback.reasoning,
        finish_reason="length",
        winner=fallback.index,
        truncated=samples.truncated,
        report={"no_answer": True},
    )


SPEC = StrategySpec(
    name="first_finish",
    summary="k samples; the first to finish with an answer wins, the rest are aborted",
    source="First Finish Search, Agarwal et al. 2025, arXiv 2505.18149",
    parameters=(ParameterSpec("k", int, 8, K_DESCRIPTION, minimum=1, maximum=64),),
    run=run,
)
