"""Choosing the answer among finished samples, shared by the voting strategies.

Votes are cast in finish order, so a tie goes to the answer whose first voter finished first:
the shortest chain, which is short-m@k's tie rule and costs the others nothing (as
lm-eval's and Qwen2.5-Math's ``Counter.most_common`` break ties). Unparseable answers do not
vote; if nothing parsed, the first finished text is returned.
"""

from __future__ import annotations

from strategies.answers import AnswerBuckets, VoteTally, answer_key
from strategies.base import StrategyOutcome
from strategies.sampling import (
    RoleName,
    SampleBook,
    Sampler,
    SampleRequest,
    SampleState,
    finish_order,
)

K_DESCRIPTION = "Samples drawn for the request (one upstream request with n=k where possible)"


async def sample_to_the_end(
    sampler: Sampler, request: SampleRequest, k: int, role: RoleName | None
) -> tuple[SampleBook, bool]:
    """Run k samples until every one finishes; return them and whether a budget cut them."""
    async with finish_order(sampler, request, k, role) as samples:
        async for _ in samples:
            pass
    return samples.book, samples.truncated


def finished_in_order(book: SampleBook) -> list[SampleState]:
    return [book.samples[i] for i in book.finish_order]


async def vote_of(sample: SampleState, answers: AnswerBuckets) -> str | None:
    """The bucket a finished sample votes in; None (no vote) if it failed or has no answer."""
    if sample.finish_reason == "error":
        return None
    return await answers.bucket(answer_key(sample.text))


async def tally_votes(samples: list[SampleState], answers: AnswerBuckets) -> VoteTally[int]:
    """A vote per sample, in the order given (finish order)."""
    tally: VoteTally[int] = VoteTally()
    for sample in samples:
        tally.add(sample.index, await vote_of(sample, answers))
    return tally


async def majority_outcome(
    book: SampleBook,
    voters: list[SampleState],
    answers: AnswerBuckets,
    *,
    truncated: bool = False,
) -> StrategyOutcome:
    """The winning answer among ``voters`` (in finish order); the text of its first voter."""
    tally = await tally_votes(voters, answers)
    leader = tally.leader()
    if leader is not None:
        winner = book.samples[tally.winner_sample(leader)]
    else:
        winner = book.first_finished() or book.longest()
    return StrategyOutcome(
        content=winner.text,
        reasoning=winner.reasoning,
        finish_reason=winner.finish_reason
        if winner.finish_reason in ("stop", "length")
        else "length",
        winner=winner.index,
        answer=leader,
        votes=dict(tally.counts),
        truncated=truncated,
        report={"agreement": round(tally.agreement(), 4), "voters": tally.total},
    )
