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

from contextlib import aclosing

from strategies.answers import answer_key
from strategies.base import ParameterSpec, StrategyOutcome, StrategySpec, StrategyTask
from strategies.sampling import BudgetExhausted, SampleBook
from strategies.selection import K_DESCRIPTION


async def run(task: StrategyTask) -> StrategyOutcome:
    k = task.params["k"]
    batch = await task.sampler.start(task.request, k, task.role)
    book = SampleBook(k)
    truncated = False
    try:
        async with aclosing(batch.events()) as events:
            async for delta in events:
                sample = book.record(delta)
                if sample is None or not sample.ended_naturally:
                    continue
                answer = answer_key(sample.text)
                if answer is not None:
                    task.decided()
                    await batch.cancel()
                    return StrategyOutcome(
                        content=sample.text,
                        finish_reason="stop",
                        winner=sample.index,
                        answer=answer,
                        votes={answer: 1},
                    )
    except BudgetExhausted:
        truncated = True
    task.decided()
    fallback = book.first_finished() or book.longest()
    return StrategyOutcome(
        content=fallback.text,
        finish_reason="length",
        winner=fallback.index,
        truncated=truncated,
        report={"no_answer": True},
    )


SPEC = StrategySpec(
    name="first_finish",
    summary="k samples; the first to finish with an answer wins, the rest are aborted",
    source="First Finish Search, Agarwal et al. 2025, arXiv 2505.18149",
    parameters=(ParameterSpec("k", int, 8, K_DESCRIPTION, minimum=1, maximum=64),),
    run=run,
)
