"""``short_m_at_k``: "Don't Overthink it" (Hassid, Synnaeve, Adi, Schwartz, 2025, arXiv 2505.17813).

Run k chains; halt all of them once the first m are done; majority-vote among those m, ties going
to the shortest chain::

    done = []
    for sample in finished_in_order(sample(prompt, k)):
        if sample.stopped_naturally:
            done.append(sample)                       # finish order = shortest first
            if len(done) == m: cancel(all others); break
    return majority(extract(s) for s in done)         # tie -> earliest in `done`

A chain cut by ``max_tokens`` is not done. If fewer than m finish, the vote runs over those that
did (and the answer is marked truncated when a budget stopped the run).
"""

from __future__ import annotations

from typing import Any

from strategies.base import (
    InvalidParameter,
    ParameterSpec,
    StrategyOutcome,
    StrategySpec,
    StrategyTask,
)
from strategies.sampling import finish_order
from strategies.selection import K_DESCRIPTION, finished_in_order, majority_outcome


def _m_at_most_k(params: dict[str, Any]) -> None:
    if params["m"] > params["k"]:
        raise InvalidParameter("m", f"m must be <= k, got m={params['m']} and k={params['k']}")


async def run(task: StrategyTask) -> StrategyOutcome:
    k, m = task.params["k"], task.params["m"]
    done = []
    async with finish_order(task.sampler, task.request, k, task.role) as samples:
        async for sample in samples:
            if sample.ended_naturally:
                done.append(sample)
                if len(done) == m:
                    task.decided()
                    await samples.stop()
                    break
    task.decided()
    book = samples.book
    voters = done or finished_in_order(book)
    outcome = await majority_outcome(book, voters, task.answers, truncated=samples.truncated)
    outcome.report["done"] = [s.index for s in done]
    return outcome


SPEC = StrategySpec(
    name="short_m_at_k",
    summary="k samples; stop all once m finished; vote among the m, ties to the shortest",
    source="Hassid et al. 2025, arXiv 2505.17813",
    parameters=(
        ParameterSpec("k", int, 8, K_DESCRIPTION, minimum=1, maximum=64),
        ParameterSpec(
            "m", int, 3, "Finished samples that end the run and vote", minimum=1, maximum=64
        ),
    ),
    run=run,
    check=_m_at_most_k,
)
