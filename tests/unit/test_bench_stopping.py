"""``ttc-gateway bench stopping``: its simulated traces, and the real strategies read from them."""

from __future__ import annotations

import random

from gateway.bench.stopping import (
    CORRECT,
    Problem,
    Rule,
    SimulatedBatch,
    Trace,
    Workload,
    draw_problems,
    run_rule,
    simulate,
    token_top_logprobs,
)
from strategies.deepconf import token_confidence


def test_each_token_reports_top_logprobs_whose_confidence_is_the_level_asked() -> None:
    for level in (0.5, 2.0, 4.0, 7.25):
        top = token_top_logprobs(level)
        assert len(top) == 5
        assert abs((token_confidence(top) or 0) - level) < 1e-12  # DeepConf's own formula


def test_problems_are_drawn_from_their_distribution_and_are_the_same_for_a_seed() -> None:
    workload = Workload(32, (0.3, 0.9), (0.0, 2.0), 3, 50, 10, 20, 4.0, 1.0, seed=7)
    first, second = draw_problems(workload), draw_problems(workload)
    assert first == second and len(first) == 2 * 2 * 50
    for leader in (0.3, 0.9):
        traces = [t for p in first if p.leader_p == leader for t in p.traces]
        share = sum(t.answer == CORRECT for t in traces) / len(traces)
        assert abs(share - leader) < 0.03  # 3,200 traces
    gap2 = [t for p in first if p.gap == 2.0 for t in p.traces]
    right = [t.confidence for t in gap2 if t.answer == CORRECT]
    wrong = [t.confidence for t in gap2 if t.answer != CORRECT]
    assert 1.7 < sum(right) / len(right) - sum(wrong) / len(wrong) < 2.3


def trace(answer: str, tokens: int, token_s: float = 1.0) -> Trace:
    return Trace(answer, tokens, token_s, 4.0)


def test_the_full_majority_breaks_ties_by_the_first_voter_to_finish() -> None:
    traces = (trace("17", 10), trace("42", 5), trace("17", 30), trace("42", 40))
    assert Problem(0.5, 0.0, traces, 0).full_majority() == "42"  # 42's first voter: 5 tokens


async def test_a_cancelled_trace_stops_and_its_tokens_so_far_are_counted() -> None:
    batch = SimulatedBatch([trace("42", 6), trace("17", 6)], random.Random(0), 0.5)
    seen = 0
    async for delta in batch.events():
        seen += 1
        if delta.sample == 1 and batch.emitted[1] == 2:
            await batch.cancel([1])
    assert batch.emitted == [6, 2] and seen == 8


async def test_the_real_majority_vote_runs_on_the_simulated_traces() -> None:
    traces = tuple(trace("42" if i % 4 else "17", 8 + i) for i in range(16))
    problem = Problem(0.75, 0.0, traces, 0)
    samples, tokens, answer = await run_rule(Rule("mv", "majority_vote", {"k": 16}), problem, 0.5)
    assert (samples, answer) == (16, "42")
    # 12 votes against 4: settled once 42 leads by more than the traces still running
    assert tokens < sum(t.tokens for t in traces)
    tallies, by_leader = await simulate([Rule("mv", "majority_vote", {"k": 16})], [problem], 0.5)
    tally = tallies[(0.0, "mv")]
    assert (tally.agree, tally.correct, tally.samples) == (1, 1, 16)
    assert by_leader[(0.75, "mv")].tokens == tokens
