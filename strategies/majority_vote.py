"""``majority_vote``: self-consistency (Wang et al., 2022, arXiv 2203.11171).

Sample k reasoning chains for the same prompt and answer with the most frequent final answer::

    samples = sample(prompt, k)                       # one request with n=k: one prefill
    answers = [extract(s) for s in samples]           # unparseable answers do not vote
    return argmax_count(answers)                      # ties: the chain that finished first

All k chains run to the end, so latency is that of the slowest chain; ``short_m_at_k`` and
``first_finish`` trade that for early stopping.
"""

from __future__ import annotations

from strategies.base import ParameterSpec, StrategyOutcome, StrategySpec, StrategyTask
from strategies.selection import (
    K_DESCRIPTION,
    finished_in_order,
    majority_outcome,
    sample_to_the_end,
)


async def run(task: StrategyTask) -> StrategyOutcome:
    book, truncated = await sample_to_the_end(
        task.sampler, task.request, task.params["k"], task.role
    )
    task.decided()
    return majority_outcome(book, finished_in_order(book), truncated=truncated)


SPEC = StrategySpec(
    name="majority_vote",
    summary="k samples; the most frequent extracted answer wins (self-consistency)",
    source="Wang et al. 2022, arXiv 2203.11171",
    parameters=(ParameterSpec("k", int, 8, K_DESCRIPTION, minimum=1, maximum=64),),
    run=run,
)
