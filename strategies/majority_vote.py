"""``majority_vote``: self-consistency (Wang et al., 2022, arXiv 2203.11171).

Sample k reasoning chains for the same prompt and answer with the most frequent final answer::

    samples = sample(prompt, k)                       # one request with n=k: one prefill
    answers = [extract(s) for s in samples]           # unparseable answers do not vote
    return argmax_count(answers)                      # ties: the chain that finished first

The vote is counted as chains finish. Once the leader is ahead of every other answer by more
than the number of chains still running, no outcome of those chains can change the winner: they
are aborted then, and the answer is the one all k chains would have given (the early stop of
Aggarwal et al. 2023, "Adaptive-Consistency", with its deterministic stopping rule). Otherwise
all k chains run to the end, so latency is that of the slowest chain; ``short_m_at_k`` and
``first_finish`` trade the answer's exactness for earlier stopping.
"""

from __future__ import annotations

from strategies.answers import VoteTally
from strategies.base import ParameterSpec, StrategyOutcome, StrategySpec, StrategyTask
from strategies.sampling import finish_order
from strategies.selection import K_DESCRIPTION, finished_in_order, majority_outcome, vote_of


async def run(task: StrategyTask) -> StrategyOutcome:
    k = task.params["k"]
    tally: VoteTally[int] = VoteTally()
    async with finish_order(task.sampler, task.request, k, task.role) as samples:
        async for sample in samples:
            tally.add(sample.index, await vote_of(sample, task.answers))
            still_running = k - len(samples.book.finish_order)
            if still_running and tally.settled(still_running):
                task.decided()
                await samples.stop()
                break
    task.decided()
    book, truncated = samples.book, samples.truncated
    outcome = await majority_outcome(
        book, finished_in_order(book), task.answers, truncated=truncated
    )
    outcome.report["settled_early"] = len(book.finish_order) < k and not truncated
    return outcome


SPEC = StrategySpec(
    name="majority_vote",
    summary="k samples; the most frequent extracted answer wins (self-consistency); "
    "stops once the vote cannot change",
    source="Wang et al. 2022, arXiv 2203.11171",
    parameters=(ParameterSpec("k", int, 8, K_DESCRIPTION, minimum=1, maximum=64),),
    run=run,
)
