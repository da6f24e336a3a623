"""Each strategy's decision rule, pinned exactly with a scripted sampler (no HTTP, no engine).

A ``RoleSampler`` plays per-sample texts token by token on a virtual clock: sample i emits a
token every ``delays[i]`` time units, so finish order is fully determined.
"""

from __future__ import annotations

from typing import Any

import pytest

from strategies import REGISTRY, InvalidParameter, StrategyOutcome, StrategyTask
from strategies.answers import AnswerBuckets, numerically_same
from strategies.sampling import (
    SampleRequest,
)
from tests.scripted import RoleSampler, Scripted


async def run(
    name: str,
    script: list[Scripted],
    budget_tokens: int | None = None,
    answers: AnswerBuckets | None = None,
    **params: Any,
) -> tuple[StrategyOutcome, RoleSampler, list[int]]:
    spec = REGISTRY[name]
    assert spec.run is not None
    sampler = RoleSampler({None: script}, budget_tokens=budget_tokens)
    decided_at: list[int] = []
    task = StrategyTask(
        request=SampleRequest(messages=[{"role": "user", "content": "q"}]),
        params=spec.parse(params),
        sampler=sampler,
        decided=lambda: decided_at.append(sampler.batches[0].emitted),
        answers=answers or AnswerBuckets(),
    )
    return await spec.run(task), sampler, decided_at


async def test_majority_vote_counts_every_parseable_answer() -> None:
    outcome, sampler, _ = await run(
        "majority_vote",
        [
            Scripted("the answer is 7", 1.0),
            Scripted("I think it is 5", 1.1),
            Scripted("no idea", 0.5),
            Scripted("so the answer is 5", 2.0),
        ],
        k=4,
    )
    assert outcome.answer == "5"
    assert outcome.votes == {"7": 1, "5": 2}  # "no idea" does not vote
    assert outcome.winner == 1  # the first voter for 5 (finish order)
    assert outcome.content == "I think it is 5"
    assert sampler.batches[0].cancelled == set()


EQUAL_NUMBERS_WRITTEN_TWO_WAYS = [
    Scripted("the answer is 0.5", 1.0),
    Scripted("the answer is 3", 1.1),
    Scripted("the answer is \\boxed{\\frac{1}{2}}", 1.2),
    Scripted("the answer is 3", 1.3),
    Scripted("the answer is 1/2", 1.4),
]


async def test_majority_vote_counts_equal_numbers_as_one_answer_with_numeric_equivalence() -> None:
    exact, _, _ = await run("majority_vote", EQUAL_NUMBERS_WRITTEN_TWO_WAYS, k=5)
    assert exact.votes == {"0.5": 1, "3": 2, "\\frac{1}{2}": 2} and exact.answer == "3"
    numeric, _, _ = await run(
        "majority_vote",
        EQUAL_NUMBERS_WRITTEN_TWO_WAYS,
        answers=AnswerBuckets(numerically_same),
        k=5,
    )
    assert numeric.votes == {"0.5": 3, "3": 2}
    assert (numeric.answer, numeric.winner) == ("0.5", 0)


async def test_short_m_at_k_votes_in_the_same_buckets() -> None:
    outcome, _, _ = await run(
        "short_m_at_k",
        EQUAL_NUMBERS_WRITTEN_TWO_WAYS,
        answers=AnswerBuckets(numerically_same),
        k=5,
        m=3,
    )
    assert outcome.votes == {"0.5": 2, "3": 1} and outcome.answer == "0.5"


async def test_majority_vote_tie_goes_to_the_chain_that_finished_first() -> None:
    outcome, _, _ = await run(
        "majority_vote",
        [
            Scripted("slow answer is 1", 3.0),
            Scripted("fast: 2", 1.0),
            Scripted("answer 1", 2.0),
            Scripted("also 2", 2.5),
        ],
        k=4,
    )
    assert outcome.votes == {"2": 2, "1": 2}
    assert outcome.answer == "2"


async def test_majority_vote_stops_once_the_remaining_samples_cannot_change_the_winner() -> None:
    script = [
        Scripted("it is 4", 1.0),
        Scripted("it is 4", 1.1),
        Scripted("it is 9", 1.2),
        Scripted("it is 4", 1.3),
        Scripted("it is 4", 1.4),  # 4 leads 4:1 with one sample left: settled here
        Scripted("a b c d e f it is 9", 1.0),
    ]
    outcome, sampler, decided = await run("majority_vote", script, k=6)
    assert outcome.votes == {"4": 4, "9": 1}
    assert outcome.answer == "4"
    assert sampler.batches[0].cancelled == {0, 1, 2, 3, 4, 5}
    assert outcome.report["settled_early"] is True
    assert decided and decided[0] < sum(len(s.text.split(" ")) for s in script)


async def test_majority_vote_waits_while_the_remaining_samples_could_still_tie() -> None:
    # After four finishes 4 leads 9 by 3:1 with two left: 9 could reach 3 and, having voted
    # first, win the tie. So every sample runs to the end.
    outcome, sampler, _ = await run(
        "majority_vote",
        [
            Scripted("it is 9", 0.5),
            Scripted("it is 4", 1.0),
            Scripted("it is 4", 1.1),
            Scripted("it is 4", 1.2),
            Scripted("a b c d it is 9", 1.0),
            Scripted("a b c d e it is 9", 1.0),
        ],
        k=6,
    )
    assert outcome.votes == {"9": 3, "4": 3}
    assert outcome.answer == "9"
    assert outcome.report["settled_early"] is False
    assert sampler.batches[0].cancelled == set()


async def test_first_finish_ignores_a_finish_without_an_answer_and_a_length_stop() -> None:
    outcome, sampler, decided = await run(
        "first_finish",
        [
            Scripted("hmm", 0.1),  # finishes first, no answer
            Scripted("the result is 12", 0.2, finish="length"),  # cut by max_tokens: not a finish
            Scripted("it is 41", 1.0),  # first real finish with an answer
            Scripted("it is 40", 5.0),
        ],
        k=4,
    )
    assert outcome.winner == 2
    assert outcome.answer == "41"
    assert outcome.finish_reason == "stop"
    assert sampler.batches[0].cancelled == {0, 1, 2, 3}  # everything else is stopped
    assert decided  # the decision was reported before the cancel


async def test_first_finish_without_any_answer_returns_the_first_finished_text() -> None:
    outcome, _, _ = await run("first_finish", [Scripted("hmm", 1.0), Scripted("well", 2.0)], k=2)
    assert outcome.content == "hmm"
    assert outcome.answer is None


async def test_short_m_at_k_stops_after_m_and_breaks_ties_by_shortest_chain() -> None:
    outcome, sampler, _ = await run(
        "short_m_at_k",
        [
            Scripted("a b c d e f g h answer 3", 1.0),  # long chain, answer 3
            Scripted("x answer 9", 1.0),  # shortest: finishes first, answer 9
            Scripted("y z answer 3", 1.0),  # second to finish, answer 3
            Scripted("p q r s answer 9", 1.0),  # fourth
            Scripted("p q r s t u v w x y z 1", 1.0),
        ],
        k=5,
        m=2,
    )
    assert outcome.report["done"] == [1, 2]
    assert outcome.votes == {"9": 1, "3": 1}
    assert outcome.answer == "9"  # tie between the two: the shortest chain wins
    assert sampler.batches[0].cancelled >= {0, 3, 4}


async def test_short_m_at_k_ignores_length_stops() -> None:
    outcome, _, _ = await run(
        "short_m_at_k",
        [
            Scripted("cut 5", 0.1, finish="length"),
            Scripted("answer 6", 1.0),
            Scripted("answer 6 too", 2.0),
            Scripted("answer 7 late", 3.0),
        ],
        k=4,
        m=2,
    )
    assert outcome.report["done"] == [1, 2]
    assert outcome.answer == "6"


def test_short_m_at_k_rejects_m_above_k() -> None:
    with pytest.raises(InvalidParameter) as caught:
        REGISTRY["short_m_at_k"].parse({"k": 2, "m": 3})
    assert caught.value.param == "m"


async def test_token_budget_stops_work_and_marks_the_answer_truncated() -> None:
    outcome, sampler, _ = await run(
        "majority_vote",
        [
            Scripted("one two three four answer 8", 1.0),
            Scripted("answer 8", 1.0),
            Scripted("a b c d e f g h i j k answer 2", 1.0),
        ],
        budget_tokens=8,
        k=3,
    )
    assert outcome.truncated
    assert sampler.batches[0].emitted == 8
    assert outcome.answer == "8"  # the best answer among what finished in budget
