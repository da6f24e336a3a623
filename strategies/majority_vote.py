"""``majority_vote``: self-consistency (Wang et al., 2022, arXiv 2203.11171).

Sample k reasoning chains for the same prompt and answer with the most frequent final answer::

    samples = sample(prompt, k)                       # one request with n=k: one prefill
    answers = [extract(s) for s in samples]           # unparseable answers do not vote
    return argmax_count(answers)                      # ties: the chain that finished first

All k chains run to the end, so latency is that of the slowest chain; ``short_m_at_k`` and
``first_finish`` trade that for early stopping.
"""

from __future__ import annotations

from contextlib import aclosing

from strategies.base import ParameterSpec, StrategyOutcome, StrategySpec, StrategyTask
from strategies.sampling import BudgetExhausted, SampleBook
from strategies.selection import K_DESCRIPTION, majority_outcome


async def run(task: StrategyTask) -> StrategyOutcome:
    k = task.params["k"]
    batch = await task.sampler.start(task.request, k, task.role)
    book = SampleBook(k)
    truncated = False
    try:
        async with aclosing(batch.events()) as events:
            async for delta in events:
                book.record(delta)
    except BudgetExhausted:
        truncated = True
    task.decided()
    voters = [book.samples[i] for i in book.finish_order]
    return majority_outcome(book, voters, truncated=truncated)


SPEC = StrategySpec(
    name="majority_vote",
    summary="k samples; the most frequent extracted answer wins (self-consistency)",
    source="Wang et al. 2022, arXiv 2203.11171",
    parameters=(ParameterSpec("k", int, 8, K_DESCRIPTION, minimum=1, maximum=64),),
    run=run,
)
