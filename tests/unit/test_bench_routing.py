"""``ttc-gateway bench routing``: its workload, what it reads from a stream and from
``/metrics``, its arithmetic, and its verdicts on the issue's targets."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from gateway.bench.routing import (
    WORDS,
    GatewayCounters,
    HotResult,
    Outcome,
    Pace,
    PolicyRun,
    PolicySummary,
    RoutingOptions,
    Shape,
    Stream,
    block_sessions,
    counter_by_label,
    decision_text,
    difference,
    error_lines,
    gateway_config,
    hot_system_prompt,
    hot_user_message,
    prose,
    ratio,
    render_hot,
    rotated,
    seeded,
    spill_bound,
    summarize,
    targets,
    upstream_error_lines,
)
from gateway.config import GatewaySettings
from gateway.engines.llamacpp_worker import command

SHAPE = Shape(
    sessions=4,
    turns=3,
    system_words=1500,
    shared_prefixes=2,
    shared_words=150,
    user_words=40,
    seed=0,
)


# -- workload --------------------------------------------------------------------------------------
def test_prose_has_exactly_the_words_asked_for_from_the_list_in_sentences() -> None:
    text = prose(seeded("x"), 1500)
    words = text.split()
    assert len(words) == 1500
    assert {w.rstrip(".").lower() for w in words} <= set(WORDS)
    sentences = text.split(". ")
    assert all(s[0].isupper() for s in sentences) and text.endswith(".")
    assert all(6 <= len(s.split()) <= 14 for s in sentences[:-1])
    assert prose(seeded("x"), 1500) == text and prose(seeded("y"), 1500) != text


def test_a_block_has_its_sessions_turns_and_shared_few_shot_blocks() -> None:
    sessions = block_sessions(SHAPE, "cache_aware", 1)
    assert [s.key for s in sessions] == [f"cache_aware-r1-s{i}" for i in range(4)]
    assert all(len(s.notes.split()) == 1500 for s in sessions)
    assert all(len(s.user_turns) == 3 for s in sessions)
    assert [t.split(":")[0] for t in sessions[0].user_turns] == [
        "Question 1",
        "Question 2",
        "Question 3",
    ]
    # sessions i and i + F share their few-shot block, and their system prompt starts with it
    assert sessions[0].shared == sessions[2].shared != sessions[1].shared == sessions[3].shared
    assert all(s.system.startswith(s.shared + "\n\nYou are assistant " + s.key) for s in sessions)
    assert all(s.system.endswith(s.notes) for s in sessions)
    assert len({s.notes for s in sessions}) == 4
    assert 150 <= len(sessions[0].shared.split()) <= 190


def test_every_block_has_prompts_no_other_block_has_and_runs_repeat_them() -> None:
    blocks = {
        (policy, r): block_sessions(SHAPE, policy, r)
        for policy in ("least_loaded", "session", "cache_aware")
        for r in range(2)
    }
    notes = [s.notes for sessions in blocks.values() for s in sessions]
    shared = {s.shared for sessions in blocks.values() for s in sessions}
    assert len(set(notes)) == len(notes) == 24
    assert len(shared) == 12  # 2 per block, none shared between blocks
    assert block_sessions(SHAPE, "session", 1) == blocks[("session", 1)]
    other_seed = block_sessions(Shape(4, 3, 1500, 2, 150, 40, seed=7), "session", 1)
    assert other_seed[0].notes != blocks[("session", 1)][0].notes


def test_the_hot_prefix_is_shared_and_each_request_has_its_own_tail() -> None:
    system = hot_system_prompt(SHAPE)
    assert system == hot_system_prompt(SHAPE)
    assert len(system.split("follow.\n\n", 1)[1].split()) == 400
    tails = {hot_user_message(SHAPE, c, n) for c in range(8) for n in range(5)}
    assert len(tails) == 40
    assert hot_user_message(SHAPE, 3, 2).startswith("Request 3.2: ")


def test_think_time_is_seeded_uniform_and_never_before_the_first_turn() -> None:
    pace = Pace(max_tokens=16, think_s=2.0, seed=0)
    waits = [pace.think_time(f"s{i}", t) for i in range(50) for t in range(1, 4)]
    assert all(0 <= w <= 4.0 for w in waits) and 1.5 < sum(waits) / len(waits) < 2.5
    assert pace.think_time("s0", 0) == 0.0
    assert waits == [pace.think_time(f"s{i}", t) for i in range(50) for t in range(1, 4)]
    assert Pace(16, 0.0, 0).think_time("s0", 2) == 0.0


def test_rounds_rotate_the_order_of_the_policies() -> None:
    policies = ["a", "b", "c", "d"]
    assert [rotated(policies, r) for r in range(5)] == [
        ["a", "b", "c", "d"],
        ["b", "c", "d", "a"],
        ["c", "d", "a", "b"],
        ["d", "a", "b", "c"],
        ["a", "b", "c", "d"],
    ]


# -- one stream ------------------------------------------------------------------------------------
def _feed(stream: Stream, lines: list[bytes], start: float = 10.0) -> None:
    for i, line in enumerate(lines):
        stream.feed(line, start + i)


def test_a_stream_gives_its_text_ttft_usage_and_worker() -> None:
    stream = Stream(started=9.5)
    _feed(
        stream,
        [
            b": deciding\n",
            b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}\n',
            b"\n",
            b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n',
            b'data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}\n',
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n',
            b'data: {"choices":[],"usage":{"prompt_tokens":2095,"completion_tokens":2,'
            b'"prompt_tokens_details":{"cached_tokens":2048}},"ttc":{"worker":"w1"}}\n',
            b"data: [DONE]\n",
        ],
    )
    assert stream.content == "Hello" and stream.done and stream.error is None
    assert stream.ttft_s == 13.0 - 9.5  # the first chunk with content, not the role chunk
    assert (stream.prompt_tokens, stream.cached_tokens, stream.worker) == (2095, 2048, "w1")
    stream.ended_at = 18.0
    outcome = stream.outcome("session", 1, 2, 3)
    assert outcome == Outcome("session", 1, 2, 3, "w1", 2095, 2048, 3.5, 8.5, None)


def test_the_header_names_the_worker_first_and_usage_without_details_counts_zero_cached() -> None:
    stream = Stream(started=0.0, worker="w0")
    _feed(
        stream,
        [
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n',
            b'data: {"choices":[],"usage":{"prompt_tokens":40,"completion_tokens":0},'
            b'"ttc":{"worker":"w1"}}\n',
        ],
        start=2.0,
    )
    assert stream.worker == "w0"
    assert (stream.prompt_tokens, stream.cached_tokens) == (40, 0)
    assert stream.content == "" and stream.ttft_s == 2.0  # no content: time to the finish
    assert not stream.done


def test_an_error_event_fails_the_stream() -> None:
    stream = Stream(started=0.0)
    stream.feed(b'data: {"error":{"message":"worker w0 failed","code":"bad_gateway"}}\n', 1.0)
    assert stream.error == "SSE error event: worker w0 failed"


# -- figures ---------------------------------------------------------------------------------------
METRICS = """\
# HELP ttc_routing_decisions_total Routing decisions
# TYPE ttc_routing_decisions_total counter
ttc_routing_decisions_total{outcome="hit",policy="cache_aware",pool="bench"} 7.0
ttc_routing_decisions_total{outcome="miss",policy="cache_aware",pool="bench"} 4.0
ttc_routing_decisions_total{outcome="spill",policy="cache_aware",pool="bench"} 1.0
ttc_routing_decisions_total{outcome="hit",policy="cache_aware",pool="other"} 2.0
# HELP ttc_upstream_errors_total Upstream errors
# TYPE ttc_upstream_errors_total counter
ttc_upstream_errors_total{kind="dropped",pool="bench",worker="w0"} 1.0
ttc_upstream_errors_total{kind="dropped",pool="bench",worker="w1"} 2.0
# HELP ttc_routing_decisions_created Routing decisions
# TYPE ttc_routing_decisions_created gauge
ttc_routing_decisions_created{outcome="hit",policy="cache_aware",pool="bench"} 1.7e9
"""


def test_routing_decisions_are_summed_by_outcome_and_differenced() -> None:
    after = counter_by_label(METRICS, "ttc_routing_decisions_total", "outcome")
    assert after == Counter({"hit": 9, "miss": 4, "spill": 1})
    before = Counter({"hit": 2, "miss": 4})
    assert difference(after, before) == {"hit": 7, "miss": 0, "spill": 1}
    dropped = counter_by_label(METRICS, "ttc_upstream_errors_total", "kind")
    assert dropped == {"dropped": 3}
    later = GatewayCounters(after, Counter({"dropped": 5})).since(GatewayCounters(before, dropped))
    assert later == GatewayCounters(Counter(hit=7, miss=0, spill=1), Counter(dropped=2))
    assert decision_text(difference(after, before)) == "hit 7, spill 1"
    assert decision_text({"balanced": 12, "miss": 0}) == "balanced 12"
    assert decision_text({}) == "none"


def _outcome(
    turn: int,
    worker: str | None,
    prompt: int,
    cached: int,
    ttft: float,
    e2e: float,
    error: str | None = None,
) -> Outcome:
    return Outcome("cache_aware", 0, 0, turn, worker, prompt, cached, ttft, e2e, error)


def test_a_policy_summary_adds_tokens_takes_percentiles_and_counts_workers() -> None:
    run = PolicyRun("cache_aware")
    run.outcomes = [
        _outcome(0, "w0", 2000, 0, 10.0, 11.0),
        _outcome(0, "w1", 2100, 100, 12.0, 13.0),
        _outcome(1, "w0", 2100, 2000, 0.2, 1.0),
        _outcome(1, "w1", 2200, 2100, 0.3, 1.2),
        _outcome(2, "w0", 2300, 2200, 0.4, 1.4),
        _outcome(2, None, 0, 0, 0.0, 0.1, error="HTTP 502: bad gateway"),
    ]
    run.decisions = Counter({"hit": 3, "miss": 2})
    run.upstream_errors = Counter({"dropped": 1})
    run.engine_hits, run.engine_queries = 6400.0, 10700.0
    s = summarize(run, ["w0", "w1", "w2"])
    assert (s.requests, s.errors) == (6, 1)
    assert (s.prompt_tokens, s.cached_tokens) == (10700, 6400)
    assert s.cached_share == pytest.approx(6400 / 10700)
    assert s.engine_cached_share == pytest.approx(6400 / 10700)
    # common.percentile over the 5 successful requests: p50 the round(2.5) = 2nd, p95 the 5th
    assert (s.ttft_p50_s, s.ttft_p95_s, s.e2e_p50_s) == (0.3, 12.0, 1.2)
    assert s.per_worker == {"w0": 3, "w1": 2, "w2": 0}
    assert s.max_worker_share == pytest.approx(0.6)
    assert s.turn1_prompt_tokens == 2050
    assert s.decisions == {"hit": 3, "miss": 2} and s.upstream_errors == {"dropped": 1}


def test_engine_counters_missing_on_a_worker_leave_that_share_unknown() -> None:
    run = PolicyRun("session", engine_hits=None, engine_queries=None)
    run.outcomes = [Outcome("session", 0, 0, 0, None, 10, 0, 1.0, 2.0)]
    s = summarize(run, ["w0", "w1"])
    assert s.engine_cached_share is None
    assert s.per_worker == {"w0": 0, "w1": 0, "?": 1}  # no X-TTC-Worker: counted apart


def test_upstream_errors_are_listed_where_a_gateway_counted_some() -> None:
    lines = upstream_error_lines(
        {"least_loaded": {"dropped": 0}, "cache_aware": {"timeout": 1, "dropped": 2}, "hot": {}}
    )
    assert lines == ["- cache_aware: dropped 2, timeout 1"]


def test_failed_requests_are_listed_by_phase_and_message() -> None:
    outcomes = [
        _outcome(0, None, 0, 0, 0, 0, error="HTTP 429: overloaded"),
        _outcome(1, None, 0, 0, 0, 0, error="HTTP 429: overloaded"),
        Outcome("hot", 0, 1, 0, None, None, None, None, 0.0, "stream ended without [DONE]"),
        _outcome(2, "w0", 10, 0, 1, 1),
    ]
    assert error_lines(outcomes) == [
        "- cache_aware: 2 x HTTP 429: overloaded",
        "- hot: 1 x stream ended without [DONE]",
    ]


# -- targets ---------------------------------------------------------------------------------------
def _summary(
    policy: str, cached: float | None, ttft: float | None, busiest: float
) -> PolicySummary:
    return PolicySummary(
        policy=policy,
        requests=32,
        errors=0,
        prompt_tokens=1000,
        cached_tokens=0 if cached is None else int(cached * 1000),
        cached_share=cached,
        engine_cached_share=cached,
        ttft_p50_s=ttft,
        ttft_p95_s=ttft,
        e2e_p50_s=ttft,
        per_worker={"w0": 16, "w1": 16},
        max_worker_share=busiest,
        turn1_prompt_tokens=2000.0,
        decisions={},
        upstream_errors={},
    )


def _marks(summaries: list[PolicySummary], hot: HotResult | None = None) -> list[str]:
    _, verdicts = targets({s.policy: s for s in summaries}, hot)
    return [v.line().split()[1] for v in verdicts]


def test_targets_pass_when_cache_aware_matches_session_and_doubles_least_loaded() -> None:
    summaries = [
        _summary("least_loaded", 0.30, 4.0, 0.5),
        _summary("session", 0.70, 0.5, 0.75),
        _summary("cache_aware", 0.66, 2.0, 0.62),
    ]
    lines, verdicts = targets({s.policy: s for s in summaries}, None)
    assert lines == [
        "- cached share, cache_aware / session: 0.94x",
        "- cached share, cache_aware / least_loaded: 2.20x",
        "- TTFT p50, cache_aware / least_loaded: 0.50x",
    ]
    assert [v.ok for v in verdicts] == [True, True, True, True, None]
    assert verdicts[0].detail == "0.94 (target ≥ 0.9)"
    assert verdicts[3].detail == "busiest worker 62% (target ≤ 65%)"
    assert verdicts[4].detail == "not measured in this run"


def test_targets_fail_on_each_figure_past_its_limit() -> None:
    summaries = [
        _summary("least_loaded", 0.40, 4.0, 0.5),
        _summary("session", 0.70, 0.5, 0.5),
        _summary("cache_aware", 0.62, 2.8, 0.66),
    ]
    # 0.62/0.70 = 0.886 < 0.9; 0.62/0.40 = 1.55 < 2; 2.8/4.0 = 0.7 > 0.6; 66% > 65%
    assert _marks(summaries) == ["FAIL", "FAIL", "FAIL", "FAIL", "n/a"]


def test_a_policy_not_run_leaves_its_targets_unmeasured_and_zero_over_zero_fails() -> None:
    assert _marks([_summary("cache_aware", 0.5, 1.0, 0.5)]) == ["n/a", "n/a", "n/a", "PASS", "n/a"]
    zero = [_summary("least_loaded", 0.0, 1.0, 0.5), _summary("cache_aware", 0.0, 1.0, 0.5)]
    _, verdicts = targets({s.policy: s for s in zero}, None)
    assert (verdicts[1].ok, verdicts[1].detail) == (False, "undefined (0/0); target ≥ 2")
    assert ratio(0.5, 0.0) == float("inf") and ratio(None, 1.0) is None and ratio(1, 4) == 0.25


def test_the_spill_bound_is_the_policys_own_rule_plus_the_request_placed() -> None:
    # no spill while load <= idlest + abs or load <= rel x idlest; then + 1
    assert spill_bound(0, 1.5, 2) == 3
    assert spill_bound(3, 1.5, 2) == 6
    assert spill_bound(10, 1.5, 2) == 16
    assert spill_bound(4, 1.5, 0) == 7


def _hot(samples: list[dict[str, int]]) -> HotResult:
    return HotResult(2, 1.5, 8, 20.0, 400, samples, [], {"hit": 30, "spill": 4}, {})


def test_hot_samples_are_judged_against_the_bound() -> None:
    hot = _hot(
        [
            {"w0": 0, "w1": 0},  # idle: not counted
            {"w0": 3, "w1": 0},  # bound 3: fine
            {"w0": 5, "w1": 3},  # bound 6, ratio 1.67
            {"w0": 2, "w1": 4},  # ratio 2.0
            {},
        ]
    )
    assert hot.busy_samples == [(3, 0), (5, 3), (4, 2)]
    assert hot.over_bound == [] and hot.idle_worker_samples == 1
    assert hot.max_ratio == 2.0
    assert _marks([], hot)[-1] == "PASS"
    worse = _hot([{"w0": 4, "w1": 0}, {"w0": 7, "w1": 3}, {"w0": 6, "w1": 3}])
    assert worse.over_bound == [(4, 0), (7, 3)]
    _, verdicts = targets({}, worse)
    assert verdicts[-1].ok is False
    assert verdicts[-1].detail.startswith("2 of 3 busy samples past")
    assert "(busiest, idlest) = (4, 0)" in verdicts[-1].detail
    assert _marks([], _hot([{"w0": 0, "w1": 0}]))[-1] == "FAIL"  # nothing measured


# -- the gateways' configuration -------------------------------------------------------------------
def test_each_gateway_gets_one_pool_of_every_worker_under_its_routing() -> None:
    options = RoutingOptions(
        shape=SHAPE,
        rounds=2,
        max_tokens=16,
        think_s=0,
        policies=["session", "cache_aware"],
        workers=2,
        parallel=2,
        context=8192,
        threads=1,
        cache_ram_mib=None,
        worker_urls=[],
        engine="llamacpp",
        model="smollm2",
        hot_clients=None,
        hot_duration_s=20,
        hot_abs=2,
        hot_rel=1.5,
    )
    workers = {"w0": "http://127.0.0.1:1", "w1": "http://127.0.0.1:2"}
    routing = {"policy": "cache_aware", "balance_abs_threshold": 2, "balance_rel_threshold": 1.5}
    config = gateway_config(8123, options, workers, routing)
    settings = GatewaySettings(**config)  # what `ttc-gateway serve --config` validates
    (pool,) = settings.pools
    assert settings.server.port == 8123 and not settings.server.access_log
    assert [(w.name, w.url) for w in pool.workers] == list(workers.items())
    assert pool.engine.value == "llamacpp" and pool.model == "smollm2"
    assert pool.routing.policy == "cache_aware"
    assert (pool.routing.balance_abs_threshold, pool.routing.balance_rel_threshold) == (2, 1.5)


def test_the_workers_started_here_can_be_given_a_host_memory_prompt_cache_size() -> None:
    argv = command("python", 9000, parallel=2, context=8192, threads=1, cache_ram_mib=0)
    assert argv[argv.index("--cache-ram-mib") + 1] == "0"
    assert "--cache-ram-mib" not in command("python", 9000)


@pytest.mark.llamacpp
def test_a_short_routing_run_reports_every_policy_on_real_workers(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "bench", "routing", "--sessions", "2", "--turns", "2",
         "--rounds", "1", "--system-words", "60", "--shared-words", "10", "--user-words", "5",
         "--max-tokens", "4", "--hot-words", "60", "--hot-duration", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in run.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| policy")
    }
    assert list(rows) == ["least_loaded", "round_robin", "session", "cache_aware"]
    for policy, cells in rows.items():
        requests, errors, per_worker = cells[0], cells[1], cells[8]
        assert (requests, errors) == ("4", "0"), policy
        counts = dict(part.split() for part in per_worker.split(", "))
        assert set(counts) == {"w0", "w1"} and sum(map(int, counts.values())) == 4, policy
    # a call on a connection llama.cpp had just closed is sent again: routed twice, and listed
    dropped = {policy: 0 for policy in rows}
    if "Upstream errors the gateways counted" in run.stdout:
        listed = run.stdout.split("Upstream errors the gateways counted", 1)[1].split("\n\n")[1]
        for line in listed.splitlines():
            phase, kinds = line.removeprefix("- ").split(": ", 1)
            counts = dict(part.split() for part in kinds.split(", "))
            dropped[phase] = int(counts.get("dropped", 0))
    for policy, cells in rows.items():
        decisions = dict(part.split() for part in cells[10].split(", "))
        assert sum(map(int, decisions.values())) == 4 + dropped[policy], (policy, run.stdout)
    # two first turns at once go to the two idle workers; each second turn finds its prefix
    if not dropped["cache_aware"]:  # a resent call is routed again, maybe elsewhere
        assert rows["cache_aware"][8] == "w0 2, w1 2"
    expected = {"cache_aware": "hit 2, miss 2", "session": "hit 4", "least_loaded": "balanced 4"}
    for policy, decisions in expected.items():
        if not dropped[policy]:  # a resent call's second decision may be either outcome
            assert rows[policy][10] == decisions, policy
    assert set(dict(p.split() for p in rows["least_loaded"][10].split(", "))) == {"balanced"}
    cached_share = float(rows["cache_aware"][2].rstrip("%"))
    assert cached_share > 30 and rows["cache_aware"][3] == rows["cache_aware"][2]
    targets = run.stdout.split("Targets:\n\n", 1)[1].splitlines()
    assert len(targets) == 5 and all(t.split()[1] in ("PASS", "FAIL") for t in targets)
    saved = json.loads((tmp_path / "routing.json").read_text())
    assert len(saved["outcomes"]) == 16 and saved["hot"]["samples"]
    assert (tmp_path / "routing.md").read_text().strip() == run.stdout.strip()


def test_the_hot_phase_report_counts_samples_against_both_bounds() -> None:
    outcomes = [
        Outcome("hot", 0, c, 0, f"w{c % 2}", 500, 480, 0.5 + c, 2.0, None) for c in range(4)
    ]
    hot = HotResult(
        2, 1.5, 8, 20.0, 400, [{"w0": 3, "w1": 0}, {"w0": 6, "w1": 3}], outcomes, {"hit": 4}, {}
    )
    lines = render_hot(hot, ["w0", "w1"])
    assert lines[2] == (
        "- requests 4, errors 0; per worker w0 2, w1 2; cached share 96.0%; TTFT p50 1,500 ms"
    )
    assert lines[3] == "- routing decisions: hit 4"
    # (3, 0): within max(0, 2) + 1 = 3, past 1.5 x 0 + 2; (6, 3): within 6, within 6.5
    assert lines[5].endswith(
        "largest busiest/idlest (samples with idlest ≥ 1): 2.00x; samples past "
        "max(rel x idlest, idlest + abs) + 1: 0; past rel x idlest + abs: 1"
    )
