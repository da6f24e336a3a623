"""``ttc-gateway bench fanout``: the stand-in's token stream, the arithmetic of the report, and
a short run end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import orjson

from gateway.bench.fanout import (
    FLOOR,
    FanoutOptions,
    Measurement,
    Row,
    process_cpu_s,
    relay_cost,
    render,
    upstream_stream_options,
)
from gateway.bench.instant_engine import TOKEN, completion, stream_chunks, token_stream


def _events(raw: list[bytes]) -> list[object]:
    body = b"".join(raw)
    assert body.endswith(b"data: [DONE]\n\n")
    events = body.split(b"\n\n")[:-2]
    return [orjson.loads(e.removeprefix(b"data: ")) for e in events]


def test_token_mode_streams_one_token_per_chunk_choices_interleaved() -> None:
    body = {"n": 3, "stream_options": {"include_usage": True}}
    raw = list(token_stream(body, True, 4))
    assert all(chunk.endswith(b"\n\n") and chunk.count(b"\n\n") == 1 for chunk in raw)
    events = _events(raw)
    roles, tokens, finishes, usage = events[:3], events[3:15], events[15:18], events[18]
    assert [e["choices"][0]["delta"] for e in roles] == [{"role": "assistant", "content": ""}] * 3
    assert [e["choices"][0]["index"] for e in tokens] == [0, 1, 2] * 4
    assert all(e["choices"][0]["delta"] == {"content": TOKEN} for e in tokens)
    ends = [
        (c["index"], c["finish_reason"], c["stop_reason"]) for e in finishes for c in e["choices"]
    ]
    assert ends == [(0, "stop", None), (1, "stop", None), (2, "stop", None)]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
    assert len(events) == 19


def test_token_mode_honours_max_tokens_and_continuous_usage() -> None:
    body = {"n": 2, "max_tokens": 2, "stream_options": {"continuous_usage_stats": True}}
    events = _events(list(token_stream(body, False, 5)))
    assert [e["choices"][0]["text"] for e in events] == [TOKEN] * 4 + [""] * 2
    assert [e["usage"]["completion_tokens"] for e in events] == [1, 1, 2, 2, 2, 2]
    assert [e["choices"][0]["finish_reason"] for e in events[-2:]] == ["length", "length"]
    answer = completion({"n": 2}, True, 3)
    assert answer["choices"][1]["message"]["content"] == TOKEN * 3
    assert answer["usage"]["completion_tokens"] == 6


def test_the_default_mode_is_unchanged() -> None:
    events = _events(stream_chunks({"n": 1, "stream_options": {"include_usage": True}}, True))
    assert len(events) == 5 and events[-1]["usage"]["completion_tokens"] == 6
    assert completion({"n": 2}, True)["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 12,
        "total_tokens": 11,
    }


def test_the_floor_asks_for_the_stream_the_gateway_asks_for() -> None:
    assert upstream_stream_options("openai") == {"include_usage": True}
    assert upstream_stream_options("vllm") == {
        "include_usage": True,
        "continuous_usage_stats": True,
    }


def test_process_cpu_is_read_from_proc() -> None:
    before = process_cpu_s(os.getpid())
    sum(i * i for i in range(300_000))
    assert process_cpu_s(os.getpid()) >= before >= 0


def _measurement(us_per_token: float) -> Measurement:
    return Measurement(
        tokens=1_000_000,
        cpu_s=us_per_token,
        elapsed_s=10.0,
        requests=625,
        errors=0,
        mismatches=0,
        examples=[],
    )


def test_relay_cost_is_the_worst_strategy_median_over_the_floor() -> None:
    rows = {
        FLOOR: Row(FLOOR, "floor", [_measurement(v) for v in (4.0, 5.0, 6.0)]),
        "majority_vote": Row("majority_vote", "mv", [_measurement(v) for v in (7, 9, 8)]),
        "first_finish": Row("first_finish", "ff", [_measurement(v) for v in (10, 6, 7)]),
    }
    worst, ratio = relay_cost(rows)
    assert worst == 8.0 and ratio == 1.6
    options = FanoutOptions(1, 0, 3, 8, 8, 200, 256, ["majority_vote", "first_finish"], "openai")
    text, ok = render(options, rows, {"include_usage": True})
    assert ok and text.splitlines()[-1] == "relay cost: 8.00 us/token = 1.60x the floor"
    rows["first_finish"].runs[0].mismatches = 1
    rows["first_finish"].runs[0].examples = ["usage.completion_tokens 1599"]
    text, ok = render(options, rows, {"include_usage": True})
    assert not ok and "- ff: usage.completion_tokens 1599" in text


def test_a_short_fanout_run_prints_the_relay_cost_last() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "bench", "fanout", "--duration", "1", "--warmup",
         "0.5", "--repeat", "1", "--tokens", "50", "--strategies", "majority_vote"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "| gateway majority_vote k=8 |" in run.stdout
    assert "Token counts exact" in run.stdout
    last = run.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"relay cost: \d+\.\d\d us/token = \d+\.\d\dx the floor", last), last
