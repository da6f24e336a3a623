"""The pure parts of ``ttc-gateway bench strategies``: dataset loading, scoring, the contract
checks on a reply, aggregation, and the ratios and targets under the table."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from gateway.bench.common import BenchError
from gateway.bench.strategies import (
    DEFAULT_DATASET,
    OPTILLM,
    Arm,
    FastestSample,
    Outcome,
    Problem,
    Sampling,
    Summary,
    Thinking,
    _ttc_headers,
    arm_list,
    build_messages,
    finish_reasons,
    gateway_config,
    gateway_outcome,
    generated_tokens,
    gold_key,
    is_correct,
    load_problems,
    optillm_messages,
    optillm_outcome,
    paired_comparison,
    parse_budgets,
    ratios_and_targets,
    render_sweep_table,
    render_table,
    run_interleaved,
    summarize,
    sweep_checks,
)
from gateway.config import GatewaySettings, load_settings


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


# --- dataset -----------------------------------------------------------------------------------


def test_gsm8k_answer_field_gives_the_number_after_hashes(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "d.jsonl",
        [{"question": "q1", "answer": "3 + 4 = <<3+4=7>>7 eggs\n#### 1,200"}],
    )
    [problem] = load_problems(path, 5)
    assert problem.question == "q1"
    assert problem.gold == "1200"


def test_plain_answer_field_is_normalised(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "d.jsonl",
        [{"question": "a", "answer": "$18.00"}, {"question": "b", "answer": 42}],
    )
    assert [p.gold for p in load_problems(path, 5)] == ["18", "42"]


def test_only_the_first_n_problems_are_loaded_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) for i in range(5)]
    path.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")
    assert [p.gold for p in load_problems(path, 3)] == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "d.jsonl:2: not JSON"),
        ('["a", "b"]', "d.jsonl:2: expected an object"),
        ('{"question": "q"}', "d.jsonl:2: needs a string question and an answer"),
        ('{"question": "q", "answer": "   "}', "d.jsonl:2: the answer"),
    ],
)
def test_a_bad_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "ok", "answer": "#### 1"}) + "\n" + line + "\n")
    with pytest.raises(BenchError, match=message):
        load_problems(path, 10)


def test_missing_or_empty_dataset_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="cannot read dataset"):
        load_problems(tmp_path / "absent.jsonl", 1)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(BenchError, match="holds no problems"):
        load_problems(tmp_path / "empty.jsonl", 1)


def test_default_dataset_loads_with_numeric_golds() -> None:
    problems = load_problems(DEFAULT_DATASET, 20)
    assert len(problems) == 20
    assert problems[0].gold == "18"  # Janet's ducks
    assert all(p.gold.lstrip("-").replace(".", "").isdigit() for p in problems)


# --- prompt and scoring ------------------------------------------------------------------------


def test_prompt_asks_for_the_answer_sentence_after_the_question() -> None:
    system, user = build_messages("How many eggs?")
    assert system["role"] == "system" and system["content"]
    assert user["role"] == "user"
    assert user["content"].startswith("User: How many eggs?\n\n")
    assert user["content"].endswith('end with "The answer is <number>."')


def test_the_engine_gets_the_same_prompt_through_optillm_and_the_gateway() -> None:
    """optillm 0.4.0's parse_conversation turns each user message into "User: <content>" and
    its majority_voting plugin sends [system, that turn]; the gateway forwards as it is given."""
    sent_to_optillm = optillm_messages("How many eggs?")
    system = next(m["content"] for m in sent_to_optillm if m["role"] == "system")
    flattened = "\n".join(f"User: {m['content']}" for m in sent_to_optillm if m["role"] == "user")
    assert build_messages("How many eggs?") == [
        {"role": "system", "content": system},
        {"role": "user", "content": flattened},
    ]


@pytest.mark.parametrize(
    ("content", "correct"),
    [
        ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is 18.", True),
        ("She makes $18.00 a day. The answer is $18.", True),
        ("Step 1: 18 dollars. The answer is 20.", False),  # the stated answer counts
        ("no number at all", False),
        (None, False),
    ],
)
def test_correct_means_answer_key_equals_gold(content: str | None, correct: bool) -> None:
    assert is_correct(content, gold_key("#### 18")) is correct


# --- one reply ---------------------------------------------------------------------------------


def _reply(content: str, ttc: dict[str, Any] | None, completion: int = 30) -> dict[str, Any]:
    body: dict[str, Any] = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": completion, "total_tokens": 50},
    }
    if ttc is not None:
        body["ttc"] = ttc
    return body


def _ttc(**overrides: Any) -> dict[str, Any]:
    ttc: dict[str, Any] = {
        "strategy": "short_m_at_k",
        "samples": {"launched": 4, "finished": 3, "aborted": 1, "failed": 0},
        "sample_tokens": [10, 5, 8, 7],
        "wasted_tokens": 2,
    }
    ttc.update(overrides)
    return ttc


def test_a_conforming_strategy_reply_is_scored_without_anomalies() -> None:
    headers = {"x-ttc-strategy": "short_m_at_k", "x-ttc-wasted-tokens": "2"}
    outcome = gateway_outcome(
        "short_m_at_k", 200, headers, _reply("The answer is 18.", _ttc()), 812.0, "18"
    )
    assert outcome.correct
    assert (outcome.completion_tokens, outcome.prompt_tokens) == (30, 50)
    assert (outcome.launched, outcome.aborted, outcome.wasted_tokens) == (4, 1, 2)
    assert outcome.wall_ms == 812.0
    assert outcome.anomalies == []


def test_contract_breaches_are_listed() -> None:
    ttc = _ttc(
        sample_tokens=[10, 5, 8],
        samples={"launched": 4, "finished": 2, "aborted": 1, "failed": 0},
    )
    outcome = gateway_outcome(
        "short_m_at_k",
        200,
        {"x-ttc-strategy": "single"},
        _reply("The answer is 18.", ttc, completion=99),
        1.0,
        "18",
    )
    assert set(outcome.anomalies) == {
        "X-TTC-Strategy header is 'single'",
        "ttc.samples: finished + aborted + failed != launched",
        "usage.completion_tokens != sum(ttc.sample_tokens)",
        "len(ttc.sample_tokens) != ttc.samples.launched",
        "X-TTC-Wasted-Tokens header != ttc.wasted_tokens",
    }
    assert outcome.correct  # a breach is reported, the answer still scored


def test_single_is_one_sample_and_its_cost_counts_toward_cost_of_pass() -> None:
    ttc = {
        "strategy": "single",
        "cost_usd": 0.002,
        "energy_joules": 3.5,
        "energy": {"method": "estimated"},
    }
    outcome = gateway_outcome(
        "single", 200, {"x-ttc-strategy": "single"}, _reply("The answer is 7.", ttc), 5.0, "7"
    )
    assert outcome.correct
    assert (outcome.launched, outcome.aborted, outcome.wasted_tokens) == (1, 0, 0)
    assert (outcome.cost_usd, outcome.energy_j, outcome.energy_method) == (
        0.002,
        3.5,
        "estimated",
    )
    assert outcome.anomalies == []
    wrong = gateway_outcome(
        "single", 200, {"x-ttc-strategy": "single"}, _reply("The answer is 8.", ttc), 5.0, "7"
    )
    row = summarize("single", [outcome, outcome, wrong], 1.0)
    assert row.cost_per_correct == 0.006 / 2 and row.joules_per_correct == 10.5 / 2
    assert summarize("single", [wrong], 1.0).cost_per_correct == float("inf")
    without = gateway_outcome(
        "single", 200, {"x-ttc-strategy": "single"}, _reply("The answer is 7.", None), 5.0, "7"
    )
    assert without.anomalies == ["no `ttc` object in the body"]


def test_strategy_reply_without_ttc_object_is_a_breach() -> None:
    outcome = gateway_outcome(
        "majority_vote", 200, {"x-ttc-strategy": "majority_vote"}, _reply("x", None), 5.0, "1"
    )
    assert outcome.anomalies == ["no `ttc` object in the body"]


def test_an_error_reply_is_an_error_not_an_answer() -> None:
    payload = {"error": {"message": "unknown", "code": "unknown_strategy"}}
    outcome = gateway_outcome("first_finish", 400, {}, payload, 3.0, "18")
    assert outcome.error == "400 unknown_strategy"
    assert not outcome.correct


def test_optillm_reply_counts_what_it_reports() -> None:
    body = {
        "choices": [{"index": 0, "message": {"content": "The answer is 18."}}],
        "usage": {"completion_tokens": 21},
    }
    outcome = optillm_outcome(200, body, 40.0, "18", k=8)
    assert outcome.correct
    assert (outcome.completion_tokens, outcome.prompt_tokens, outcome.launched) == (21, 0, 8)
    assert optillm_outcome(500, {"error": "boom"}, 1.0, "18", k=8).error == "500 boom"


# --- aggregation -------------------------------------------------------------------------------


def test_summary_sums_successes_and_takes_wall_percentiles_over_them() -> None:
    outcomes = [
        Outcome(100.0, correct=True, completion_tokens=10, prompt_tokens=5, wasted_tokens=1,
                launched=8, aborted=5),
        Outcome(300.0, correct=False, completion_tokens=30, prompt_tokens=5, wasted_tokens=0,
                launched=8, aborted=5, anomalies=["x"]),
        Outcome(200.0, correct=True, completion_tokens=20, prompt_tokens=5, wasted_tokens=1,
                launched=8, aborted=5, anomalies=["x"]),
        Outcome(300_000.0, error="0 no answer in 300 s"),
    ]  # fmt: skip
    s = summarize("short_m_at_k", outcomes, elapsed_s=8.0, engine_tokens=61)
    assert (s.problems, s.correct, s.errors) == (4, 2, 1)
    assert s.accuracy == 0.5
    assert (s.completion_tokens, s.prompt_tokens, s.wasted_tokens) == (60, 15, 2)
    assert (s.wall_p50_ms, s.wall_p95_ms) == (200.0, 300.0)
    assert s.requests_per_s == 0.5
    assert (s.launched, s.aborted, s.engine_tokens) == (24, 15, 61)
    assert s.wasted_share == pytest.approx(2 / 60)
    assert s.anomalies == {"x": 2}
    assert s.error_kinds == {"0 no answer in 300 s": 1}


def test_summary_of_only_failures_has_no_percentiles() -> None:
    s = summarize("first_finish", [Outcome(0.0, error="400 unknown_strategy")], 1.0)
    assert (s.wall_p50_ms, s.wall_p95_ms, s.launched, s.wasted_share) == (None, None, None, None)
    assert "| first_finish | 0/1 (0%) |" in render_table([s])[2]


def _row(name: str, p50: float, tokens: int, correct: int = 5, wasted: int = 0) -> Summary:
    return Summary(
        name=name,
        problems=10,
        correct=correct,
        errors=0,
        completion_tokens=tokens,
        prompt_tokens=100,
        wasted_tokens=wasted,
        wall_p50_ms=p50,
        wall_p95_ms=p50 * 1.5,
        requests_per_s=1.0,
        launched=80,
        aborted=0,
    )


def test_targets_pass_and_fail_on_the_measured_ratios() -> None:
    rows = {
        "single": _row("single", 1000, 1000),
        "majority_vote": _row("majority_vote", 4000, 8000),
        "first_finish": _row("first_finish", 1300, 4000, wasted=40),
        "short_m_at_k": _row("short_m_at_k", 2800, 6000, correct=6, wasted=300),
        OPTILLM: _row(OPTILLM, 4200, 1000),
    }
    fastest = FastestSample(
        first_ms=[800.0, 900.0, 700.0], first_answer_ms=[1000.0, 1200.0, 900.0], answered=2
    )
    lines, verdicts = ratios_and_targets(rows, fastest, k=8, m=3)
    results = {v.name: v.ok for v in verdicts}
    assert results == {
        "short_m_at_k wall p50 vs majority_vote": True,  # 0.70
        "short_m_at_k completion tokens vs majority_vote": True,  # 0.75
        "first_finish wall p50 vs fastest single sample": False,  # 1300 / 1000 = 1.30
        "first_finish wasted tokens": True,  # 1%
        "short_m_at_k wasted tokens": False,  # 5%
        "majority_vote wall p50 vs optillm majority_voting": True,  # 0.95
        "short_m_at_k vs optillm majority_voting": True,  # 0.67, 6 >= 5 correct
    }
    assert lines[0].endswith("wall p50 0.70x, completion tokens 0.75x")
    assert "1.30x" in lines[1]
    assert any(v.line().startswith("- FAIL first_finish wall p50") for v in verdicts)


def test_paired_comparison_gives_the_total_ratio_and_an_interval_around_it() -> None:
    ours = [1100.0, 900.0, 2000.0, None, 1500.0, 800.0]
    theirs = [1000.0, 1000.0, 1900.0, 1000.0, 1500.0, None]  # failed requests drop the pair
    paired = paired_comparison(ours, theirs)
    assert paired is not None
    assert paired.problems == 4 and paired.faster == 1
    assert paired.total_ratio == pytest.approx(5500 / 5400)
    assert paired.low < paired.total_ratio < paired.high
    assert paired == paired_comparison(ours, theirs)  # seeded: the same run, the same interval
    # a consistent 10% lead over many problems gives an interval that excludes parity
    steady = paired_comparison([1100.0 + i for i in range(40)], [1000.0 + i for i in range(40)])
    assert steady is not None and 1.0 < steady.low <= steady.high < 1.11
    assert paired_comparison([1.0], [1.0]) is None


def test_the_report_shows_majority_vote_vs_optillm_problem_by_problem() -> None:
    rows = {
        "majority_vote": replace(
            _row("majority_vote", 4000, 8000), walls_ms=(4000.0, 3000.0, 5000.0)
        ),
        OPTILLM: replace(_row(OPTILLM, 4200, 1000), walls_ms=(4200.0, 3300.0, 4800.0)),
    }
    lines, _ = ratios_and_targets(rows, None, k=8, m=3)
    assert any(
        line.startswith("- majority_vote vs optillm, problem by problem: total wall time 0.976x")
        and line.endswith("over 3 problems), faster on 2/3")
        for line in lines
    )


def test_short_m_at_k_fails_against_optillm_when_less_accurate() -> None:
    rows = {
        "short_m_at_k": _row("short_m_at_k", 1000, 6000, correct=4),
        OPTILLM: _row(OPTILLM, 4000, 1000, correct=5),
    }
    _, verdicts = ratios_and_targets(rows, None, k=8, m=3)
    [verdict] = [v for v in verdicts if v.name == "short_m_at_k vs optillm majority_voting"]
    assert verdict.ok is False
    assert "accuracy 4/10 vs 5/10" in verdict.detail


def test_targets_without_their_rows_are_not_applicable() -> None:
    _, verdicts = ratios_and_targets({"single": _row("single", 1, 1)}, None, k=8, m=3)
    assert all(v.ok is None for v in verdicts)
    assert all(v.line().startswith("- n/a ") for v in verdicts)


# --- stream and metrics parsing ----------------------------------------------------------------


def test_finish_reasons_of_sse_lines() -> None:
    chunk = {
        "choices": [
            {"index": 0, "delta": {"content": "x"}, "finish_reason": None},
            {"index": 3, "delta": {}, "finish_reason": "length"},
        ]
    }
    assert finish_reasons(b"data: " + json.dumps(chunk).encode() + b"\n") == ["length"]
    assert finish_reasons(b"data: [DONE]\n") == []
    assert finish_reasons(b": keep-alive\n") == []
    assert finish_reasons(b"\n") == []
    with pytest.raises(BenchError, match="error event"):
        finish_reasons(b'data: {"error": {"message": "worker failed"}}\n')


def test_engine_generated_token_counters() -> None:
    llamacpp = (
        "# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.\n"
        "# TYPE llamacpp:tokens_predicted_total counter\n"
        "llamacpp:tokens_predicted_total 171\n"
        "llamacpp:tokens_predicted_seconds_total 56.58\n"
    )
    vllm = (
        'vllm:generation_tokens_total{engine="0",model_name="smol"} 1200.0\n'
        'vllm:generation_tokens_total{engine="1",model_name="smol"} 34.0\n'
    )
    assert generated_tokens(llamacpp) == 171
    assert generated_tokens(vllm) == 1234
    assert generated_tokens("other_metric 5\n") is None


# --- interleaving ------------------------------------------------------------------------------


async def test_interleaved_arms_take_turns_in_an_order_rotated_per_problem() -> None:
    calls: list[tuple[str, str]] = []

    def arm(name: str, wall_ms: float) -> Any:
        async def one(problem: Problem) -> Outcome:
            calls.append((name, problem.question))
            return Outcome(wall_ms, correct=name == "a", completion_tokens=10)

        return one

    problems = [Problem(f"q{i}", "1") for i in range(3)]
    rows = await run_interleaved(
        None,  # type: ignore[arg-type]  # no engine URL: the session is never used
        {"a": arm("a", 5.0), "b": arm("b", 7.0), "c": arm("c", 9.0)},
        problems,
        engine_url=None,
    )
    assert calls == [
        ("a", "q0"), ("b", "q0"), ("c", "q0"),
        ("b", "q1"), ("c", "q1"), ("a", "q1"),
        ("c", "q2"), ("a", "q2"), ("b", "q2"),
    ]  # fmt: skip
    assert (rows["a"].correct, rows["b"].correct) == (3, 0)
    assert rows["c"].wall_p50_ms == 9.0 and rows["c"].completion_tokens == 30
    assert rows["a"].engine_tokens is None


def test_a_param_option_becomes_its_strategys_header_only() -> None:
    from gateway.bench.strategies import Sampling, _ttc_headers, parse_param

    params = (parse_param("deepconf.warmup=4"), parse_param("deepconf.top_logprobs=5"))
    sampling = Sampling(k=8, m=3, max_tokens=64, temperature=0.7, params=params)
    assert _ttc_headers("deepconf", {"k"}, sampling) == {
        "X-TTC-Strategy": "deepconf",
        "X-TTC-K": "8",
        "X-TTC-Warmup": "4",
        "X-TTC-Top-Logprobs": "5",
    }
    assert _ttc_headers("majority_vote", {"k"}, sampling) == {
        "X-TTC-Strategy": "majority_vote",
        "X-TTC-K": "8",
    }
    with pytest.raises(typer.BadParameter, match=r"STRATEGY\.NAME=VALUE"):
        parse_param("warmup=4")


# --- the thinking-budget sweep -----------------------------------------------------------------


def test_thinking_budgets_parse_in_the_order_given() -> None:
    assert parse_budgets("0,16, 64,256") == (0, 16, 64, 256)
    assert parse_budgets("32") == (32,)
    for text, message in [
        ("", "name at least one budget"),
        ("16,x", "whole numbers"),
        ("16,-1", "negative"),
        ("16,64,16", "repeated"),
    ]:
        with pytest.raises(typer.BadParameter, match=message):
            parse_budgets(text)


def test_each_strategy_runs_with_no_budget_then_at_each_budget() -> None:
    arms = arm_list(["single", "majority_vote"], (0, 16))
    assert [a.name for a in arms] == [
        "single", "single t=0", "single t=16",
        "majority_vote", "majority_vote t=0", "majority_vote t=16",
    ]  # fmt: skip
    assert arms[2] == Arm("single", 16)
    # without a sweep: one arm per strategy, named as before
    assert [a.name for a in arm_list(["single", "first_finish"], ())] == ["single", "first_finish"]


def test_a_budget_arm_sends_its_budget_and_the_answer_budget() -> None:
    sampling = Sampling(
        k=4, m=3, max_tokens=256, temperature=0.7, thinking_budgets=(0, 16), answer_budget=64
    )
    assert _ttc_headers("majority_vote", {"k"}, sampling, 0) == {
        "X-TTC-Strategy": "majority_vote",
        "X-TTC-K": "4",
        "X-TTC-Thinking-Budget": "0",
        "X-TTC-Answer-Budget": "64",
    }
    assert _ttc_headers("majority_vote", {"k"}, sampling) == {
        "X-TTC-Strategy": "majority_vote",
        "X-TTC-K": "4",
    }


def _thinking_reply(samples: list[tuple[int, bool]], reasoning: int | None) -> dict[str, Any]:
    body = _reply(
        "The answer is 18.",
        _ttc(
            strategy="majority_vote",
            samples={"launched": 2, "finished": 2, "aborted": 0, "failed": 0},
            sample_tokens=[40, 40],
            wasted_tokens=0,
            thinking={
                "budget": 16,
                "answer_budget": 64,
                "samples": [{"thinking_tokens": t, "cut": c} for t, c in samples],
            },
        ),
        completion=80,
    )
    if reasoning is not None:
        body["usage"]["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return body


def test_thinking_tokens_come_from_usage_and_cuts_from_the_thinking_report() -> None:
    headers = {"x-ttc-strategy": "majority_vote", "x-ttc-wasted-tokens": "0"}
    outcome = gateway_outcome(
        "majority_vote", 200, headers, _thinking_reply([(16, True), (9, False)], 25), 9.0, "18",
        thinking_budget=16,
    )  # fmt: skip
    assert (outcome.thinking_tokens, outcome.thinking_samples, outcome.cut) == (25, 2, 1)
    assert outcome.anomalies == []
    # a step-wise strategy: its kept steps in usage, no samples listed, nothing amiss
    steps = gateway_outcome(
        "majority_vote", 200, headers, _thinking_reply([], 40), 9.0, "18", thinking_budget=16
    )
    assert (steps.thinking_tokens, steps.thinking_samples, steps.cut) == (40, 0, 0)
    assert steps.anomalies == []


def test_thinking_that_does_not_reconcile_is_a_breach() -> None:
    headers = {"x-ttc-strategy": "majority_vote", "x-ttc-wasted-tokens": "0"}
    outcome = gateway_outcome(
        "majority_vote", 200, headers, _thinking_reply([(15, True), (20, False)], 30), 9.0, "18",
        thinking_budget=16,
    )  # fmt: skip
    assert set(outcome.anomalies) == {
        "usage reasoning_tokens != sum(ttc.thinking.samples[].thinking_tokens)",
        "a sample thought more than the thinking budget",
        "a cut sample's thinking is not exactly the budget",
    }
    other_budget = gateway_outcome(
        "majority_vote", 200, headers, _thinking_reply([(0, False)], None), 9.0, "18",
        thinking_budget=0,
    )  # fmt: skip
    assert other_budget.anomalies == ["ttc.thinking.budget is 16"]
    # a reply with no thinking report under a budget
    bare = gateway_outcome(
        "majority_vote", 200, headers, _reply("x", _ttc(strategy="majority_vote")), 9.0, "1",
        thinking_budget=16,
    )  # fmt: skip
    assert "no ttc.thinking.samples list under a thinking budget" in bare.anomalies


def _arm_row(
    name: str,
    tokens: int,
    thinking: int,
    cut: int,
    walls: tuple[float, ...],
    cost: float,
    correct: int = 1,
    thinking_samples: int = 8,
    engine: int | None = None,
) -> Summary:
    return replace(
        _row(name, sorted(walls)[len(walls) // 2], tokens, correct=correct),
        problems=len(walls),
        walls_ms=walls,
        thinking_tokens=thinking,
        thinking_samples=thinking_samples,
        cut=cut,
        cost_usd=cost,
        engine_tokens=engine,
    )


def test_the_sweep_table_puts_each_budget_beside_the_no_budget_arm() -> None:
    arms = arm_list(["majority_vote"], (0, 16))
    rows = {
        "majority_vote": _arm_row("majority_vote", 1000, 1000, 0, (1000.0, 3000.0), 0.002, 2),
        "majority_vote t=0": _arm_row("majority_vote t=0", 400, 0, 0, (500.0, 700.0), 0.001, 0),
        "majority_vote t=16": _arm_row("majority_vote t=16", 600, 120, 6, (800.0, 1200.0), 0.0015),
    }
    header, rule, none, zero, sixteen = render_sweep_table(arms, rows)
    assert header.startswith("| strategy | thinking budget | accuracy | completion tokens ")
    assert rule.count("|") == header.count("|")
    assert none == (
        "| majority_vote | none | 2/2 (100%) | 1,000 | 1,000 (100%) | 0/8 | 3,000 | 2,000 "
        "| 0.002000 | 0.001000 | 1.00x | 1.00x | 1.00x | 1.00x | 1.00x |"
    )
    # no correct answer: $ per correct is infinite and has no ratio
    assert zero == (
        "| majority_vote | 0 | 0/2 (0%) | 400 | 0 (0%) | 0/8 | 700 | 600 "
        "| 0.001000 | ∞ | 0.40x | 0.23x | 0.30x | 0.50x | - |"
    )
    assert sixteen == (
        "| majority_vote | 16 | 1/2 (50%) | 600 | 120 (20%) | 6/8 | 1,200 | 1,000 "
        "| 0.001500 | 0.001500 | 0.60x | 0.40x | 0.50x | 0.75x | 1.50x |"
    )


def test_a_sweep_without_its_no_budget_row_has_no_ratios() -> None:
    arms = [Arm("single", 16)]
    rows = {"single t=16": _arm_row("single t=16", 100, 16, 1, (10.0,), 0.1, thinking_samples=1)}
    [_, _, line] = render_sweep_table(arms, rows)
    assert line.endswith(
        "| 100 | 16 (16%) | 1/1 | 10 | 10 | 0.100000 | 0.100000 | - | - | - | - | - |"
    )


def test_sweep_checks_say_whether_thinking_fits_the_budget() -> None:
    arms = arm_list(["majority_vote"], (16, 64))
    rows = {
        "majority_vote": _arm_row("majority_vote", 1000, 1000, 0, (1.0,), 0.0),
        # 8 samples at t=16: at most 128 thinking tokens, at least 6 x 16 = 96 for the cut ones
        "majority_vote t=16": _arm_row("majority_vote t=16", 600, 120, 6, (1.0,), 0.0, engine=600),
        # 8 samples cut at t=64 must hold 512 thinking tokens, not 600
        "majority_vote t=64": _arm_row("majority_vote t=64", 900, 600, 8, (1.0,), 0.0, engine=890),
    }
    assert sweep_checks(arms, rows) == [
        "- majority_vote t=16: thinking 120 tokens over 8 samples, 6 cut: 96 (t x cut) <= 120 "
        "<= 128 (t x samples) ok; engine counted 600 generated tokens, usage 600 (+0)",
        "- majority_vote t=64: thinking 600 tokens over 8 samples, 8 cut: 512 (t x cut) <= 600 "
        "<= 512 (t x samples) DOES NOT RECONCILE; engine counted 890 generated tokens, usage "
        "900 (-10)",
    ]
    # a step-wise strategy lists no samples: its kept steps are at most t per request
    steps = {"glimp_router t=64": _arm_row("glimp_router t=64", 300, 150, 0, (1.0,) * 3, 0.0, 0, 0)}
    assert sweep_checks([Arm("glimp_router", 64)], steps) == [
        "- glimp_router t=64: thinking 150 tokens over 3 requests, 0 cut: 0 (t x cut) <= 150 "
        "<= 192 (t x requests) ok"
    ]


def test_the_reasoning_option_changes_only_the_pools_thinking(tmp_path: Path) -> None:
    config = gateway_config(Thinking.OPENED)
    assert [p["reasoning"]["thinking"] for p in config["pools"]] == ["opened"]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_settings(path)
    default = GatewaySettings()
    [pool], [default_pool] = loaded.pools, default.pools
    assert pool.reasoning.thinking == "opened"
    assert pool.model_copy(update={"reasoning": default_pool.reasoning}) == default_pool
    assert loaded.model_copy(update={"pools": default.pools}) == default
