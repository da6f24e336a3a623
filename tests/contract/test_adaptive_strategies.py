"""``deepconf`` and ``adaptive_consistency`` through the gateway against engine stand-ins: what
goes upstream (the warm-up as one n=warmup request with top logprobs, later traces one request
each on the same worker, waves as one request each), a trace killed mid-way aborted upstream
and billed, what is reported and counted, streaming, and every budget cutting both.

The stand-in's top alternatives for a token of log-probability ``lp`` are ``lp``, ``lp - 1``,
..., so with ``top_logprobs: 2`` the token confidence is ``-(lp + lp - 1) / 2 = 0.5 - lp``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import MeteringConfig
from tests.standin import RunningStandin, SampleScript, Script, serve_standin
from tests.standin_fixtures import PUBLIC_MODEL, chat_body, pool_for, serve_gateway, sse_events

IN, OUT = 1e-6, 1e-4  # USD per prompt / generated token of the test's price book


def confident(text: str, confidence: float, token_delay_s: float = 0.0) -> SampleScript:
    """A sample whose every token has this confidence (with ``top_logprobs: 2``)."""
    return SampleScript(text, token_delay_s=token_delay_s, logprobs=[0.5 - confidence])


def generations(standin: RunningStandin) -> list[dict[str, Any]]:
    return [r.body for r in standin.engine.requests if r.path == "/v1/chat/completions"]


DEEPCONF = {
    "X-TTC-Strategy": "deepconf",
    "X-TTC-Top-Logprobs": "2",
    "X-TTC-Window": "2",
    "X-TTC-Eta": "50",
}


@pytest.mark.parametrize("engine", ["vllm", "llamacpp"])
async def test_deepconf_kills_a_trace_upstream_and_bills_its_tokens(engine: str) -> None:
    script = Script(
        draw=True,
        samples=[  # the warm-up's lowest group confidences 3, 2, 1, 0.5: threshold 1.5
            confident("the answer is 7", 3.0),
            confident("the answer is 5", 2.0),
            confident("the answer is 5", 1.0),
            confident("the answer is 7", 0.5),
            # confidences 0.5, 3, 2, 0.5, ...: windows 1.75, 2.5, 1.25 < 1.5 -> killed at token 4
            SampleScript(
                " ".join(["think"] * 80), token_delay_s=0.02, logprobs=[0.0, -2.5, -1.5, 0.0, 0.0]
            ),
            confident("the answer is 7", 2.5, token_delay_s=0.05),
        ],
    )
    async with (
        serve_standin(engine, script) as first,
        serve_standin(engine, script) as second,
        serve_gateway(pool_for(engine, first.url, second.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={**DEEPCONF, "X-TTC-K": "6", "X-TTC-Warmup": "4", "X-TTC-Wave": "2"},
        )
        assert response.status_code == 200, response.text
        worker, other = sorted((first, second), key=lambda s: -len(generations(s)))
        await worker.engine.wait_until(lambda e: e.running == 0 and e.aborted == 1, 2.0)
        counted = {
            d: await gw.metric("ttc_strategy_decisions_total", strategy="deepconf", decision=d)
            for d in ("killed", "stopped_k")
        }
        assert await gw.in_flight() == {first.url: 0, second.url: 0}
    sent = generations(worker)
    # one warm-up request with n=4, then one request per trace, all on the warm-up's worker
    assert [b["n"] for b in sent] == [4, 1, 1] and generations(other) == []
    assert all(b["logprobs"] is True and b["top_logprobs"] == 2 for b in sent)
    body = response.json()
    report, decisions = body["ttc"], body["ttc"]["decisions"]
    assert decisions["threshold"] == 1.5
    assert [t["confidence"] for t in decisions["traces"]] == [3.0, 2.0, 1.0, 0.5, 1.25, 2.5]
    assert decisions["traces"][4]["killed_at"] == 4
    assert (decisions["stopped"], decisions["weights"]) == ("k", {"7": 5.5, "5": 2.0})
    assert report["samples"] == {"launched": 6, "finished": 5, "aborted": 1, "failed": 0}
    tokens = report["sample_tokens"]
    assert tokens[:4] == [4, 4, 4, 4] and tokens[5] == 4
    assert 4 <= tokens[4] <= 6  # cut at the kill: at most a network read more
    assert body["usage"]["completion_tokens"] == sum(tokens)  # the killed trace is billed
    assert body["choices"][0]["message"]["content"] == "the answer is 7"
    assert report["winner"] == {"sample": 0, "answer": "7"}
    assert counted == {"killed": 1.0, "stopped_k": 1.0}


async def test_adaptive_consistency_stops_mid_wave_and_aborts_the_rest_upstream() -> None:
    slow = SampleScript(" ".join(["slow"] * 100) + " 5", token_delay_s=0.02)
    script = Script(
        draw=True,
        samples=[  # 3-0 after wave 1 (P = 15/16 < 0.95); 4-0 at wave 2's first (31/32)
            SampleScript("the answer is 7"),
            SampleScript("the answer is 7"),
            SampleScript("the answer is 7"),
            SampleScript("the answer is 7", token_delay_s=0.01),
            slow,
            slow,
        ],
    )
    async with (
        serve_standin("vllm", script) as first,
        serve_standin("vllm", script) as second,
        serve_gateway(pool_for("vllm", first.url, second.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={"X-TTC-Strategy": "adaptive_consistency", "X-TTC-Wave": "3"},
        )
        assert response.status_code == 200, response.text
        worker, other = sorted((first, second), key=lambda s: -len(generations(s)))
        await worker.engine.wait_until(lambda e: e.running == 0 and e.aborted == 1, 2.0)
        counted = await gw.metric(
            "ttc_strategy_decisions_total",
            strategy="adaptive_consistency",
            decision="stopped_consensus",
        )
    assert [b["n"] for b in generations(worker)] == [3, 3]  # both waves on one worker
    assert generations(other) == []
    body = response.json()
    report, decisions = body["ttc"], body["ttc"]["decisions"]
    assert (decisions["stopped"], decisions["waves"], decisions["launched"]) == ("consensus", 2, 6)
    assert [c["p"] for c in decisions["checks"]] == [0.75, 0.875, 0.9375, 0.96875]
    assert report["samples"] == {"launched": 6, "finished": 4, "aborted": 2, "failed": 0}
    assert report["votes"] == {"7": 4}
    tokens = report["sample_tokens"]
    assert tokens[:4] == [4, 4, 4, 4] and all(t < 20 for t in tokens[4:])
    assert body["usage"]["completion_tokens"] == sum(tokens)
    assert counted == 1.0


@pytest.mark.parametrize("strategy", ["deepconf", "adaptive_consistency"])
async def test_both_stream_the_decided_answer_with_the_report_last(strategy: str) -> None:
    script = Script(draw=True, samples=[confident("the answer is 4", 1.0, 0.01)] * 8)
    headers = {"X-TTC-Strategy": strategy, "X-TTC-K": "8"}
    if strategy == "deepconf":
        headers.update({"X-TTC-Warmup": "4", "X-TTC-Top-Logprobs": "2"})
    async with (
        serve_standin("llamacpp", script) as standin,
        serve_gateway(pool_for("llamacpp", standin.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(stream=True, stream_options={"include_usage": True}),
            headers=headers,
        )
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    content = "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events[:-1]
        if e.get("choices") and "delta" in e["choices"][0]
    )
    assert content == "the answer is 4"
    final = next(e for e in events[:-1] if "ttc" in e)
    assert final["ttc"]["decisions"]["stopped"] == "consensus"
    usage = events[-2]["usage"]
    assert usage["completion_tokens"] == sum(final["ttc"]["sample_tokens"])


def two_answers_then_long(long_delay_s: float) -> Script:
    """Answers 7 and 5 (a tie: neither rule stops), then traces too long for any budget."""
    long = " ".join(["w"] * 300)
    return Script(
        draw=True,
        samples=[
            confident("the answer is 7", 3.0),
            confident("the answer is 5", 3.0),
            confident("no answer", 1.0),
            confident(long, 3.0, long_delay_s),
            confident(long, 3.0, long_delay_s),
            confident(long, 3.0, long_delay_s),
        ],
    )


STRATEGIES = {
    # warm-up 7 (3.0), 5 (3.0), none (1.0): eta 90 sets the bar at 1.4, 7 and 5 tie at 0.5
    "deepconf": {**DEEPCONF, "X-TTC-Eta": "90", "X-TTC-Warmup": "3", "X-TTC-Wave": "2"},
    # wave 1: 7, 5 and no answer, P(1-1) = 0.5
    "adaptive_consistency": {"X-TTC-Strategy": "adaptive_consistency", "X-TTC-Wave": "3"},
}


@pytest.fixture
def prices(tmp_path: Path) -> MeteringConfig:
    path = tmp_path / "prices.yaml"
    path.write_text(
        f"models:\n  {PUBLIC_MODEL}:\n    input_cost_per_token: {IN}\n"
        f"    output_cost_per_token: {OUT}\n"
    )
    return MeteringConfig(prices_file=str(path))


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("budget", ["deadline", "tokens", "cost"])
async def test_every_budget_cuts_both_and_they_answer_with_the_best_so_far(
    strategy: str, budget: str, prices: MeteringConfig
) -> None:
    header, value = {
        "deadline": ("X-TTC-Deadline-Ms", "700"),
        "tokens": ("X-TTC-Max-Tokens-Total", "40"),
        "cost": ("X-TTC-Max-Cost-USD", f"{30 * OUT}"),
    }[budget]
    async with (
        serve_standin("vllm", two_answers_then_long(0.01)) as standin,
        serve_gateway(pool_for("vllm", standin.url), metering=prices) as gw,
    ):
        started = time.monotonic()
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={**STRATEGIES[strategy], "X-TTC-K": "9", header: value},
        )
        elapsed = time.monotonic() - started
        await standin.engine.wait_until(lambda e: e.running == 0, 2.0)
    assert response.status_code == 200, response.text
    body = response.json()
    report = body["ttc"]
    assert report["truncated"] is True and response.headers["x-ttc-truncated"] == "true"
    assert report["decisions"]["stopped"] == f"budget_{budget}"
    assert report["winner"]["answer"] == "7"  # 7 and 5 tie; 7 was voted first
    assert body["usage"]["completion_tokens"] == sum(report["sample_tokens"])
    long_streams = len(report["sample_tokens"]) - 3
    if budget == "deadline":
        assert 0.7 <= elapsed < 2.0
    elif budget == "tokens":  # each stream reads at most one chunk past the total
        assert 40 <= body["usage"]["completion_tokens"] <= 40 + long_streams
    else:
        spent = report["cost"]["price_table_usd"]
        assert 30 * OUT <= spent <= 30 * OUT + long_streams * OUT, spent


async def test_strategies_lists_both_with_their_parameters() -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        listed = (await gw.client.get("/v1/strategies")).json()["data"]
    by_name = {s["name"]: s for s in listed}
    deepconf = {p["name"]: p for p in by_name["deepconf"]["parameters"]}
    assert {n: p["default"] for n, p in deepconf.items()} == {
        "k": 32,
        "warmup": 16,
        "eta": 10.0,
        "window": 64,
        "consensus": 0.95,
        "wave": 4,
        "top_logprobs": 20,
        "mode": "online",
    }
    assert deepconf["mode"]["choices"] == ["online", "offline"]
    adaptive = {p["name"]: p for p in by_name["adaptive_consistency"]["parameters"]}
    assert {n: p["default"] for n, p in adaptive.items()} == {
        "k": 16,
        "wave": 2,
        "stop_rule": "beta",
        "confidence": 0.95,
    }
    assert adaptive["stop_rule"]["choices"] == ["beta", "esc"]


@pytest.mark.parametrize(
    ("headers", "param"),
    [
        ({"X-TTC-Strategy": "deepconf", "X-TTC-K": "8", "X-TTC-Warmup": "9"}, "X-TTC-Warmup"),
        ({"X-TTC-Strategy": "deepconf", "X-TTC-Eta": "100"}, "X-TTC-Eta"),
        ({"X-TTC-Strategy": "deepconf", "X-TTC-Mode": "batch"}, "X-TTC-Mode"),
        ({"X-TTC-Strategy": "adaptive_consistency", "X-TTC-Wave": "20"}, "X-TTC-Wave"),
        ({"X-TTC-Strategy": "adaptive_consistency", "X-TTC-Stop-Rule": "x"}, "X-TTC-Stop-Rule"),
    ],
)
async def test_bad_parameters_are_400_naming_the_header(
    headers: dict[str, str], param: str
) -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert standin.engine.requests == []


@pytest.mark.parametrize("strategy", list(STRATEGIES))
async def test_a_deadline_while_a_wave_waits_for_a_free_slot_answers_with_the_votes_so_far(
    strategy: str,
) -> None:
    """The worker runs one request at a time: the next wave waits for its headers, and the
    deadline passes there, not mid-stream. The answer is the best so far (a 200, truncated),
    not a 504 that would drop the votes already in."""
    script = Script(
        draw=True,
        samples=[
            confident("the answer is 7", 3.0),  # deepconf's warm-up, or the first wave
            confident("the answer is 7", 3.0),
            SampleScript(" ".join(["think"] * 100), token_delay_s=0.02, logprobs=[-2.5]),
            SampleScript(" ".join(["think"] * 100), token_delay_s=0.02, logprobs=[-2.5]),
        ],
    )
    headers = {
        **STRATEGIES[strategy],
        "X-TTC-K": "6",
        "X-TTC-Wave": "2",
        "X-TTC-Deadline-Ms": "700",
    }
    if strategy == "deepconf":
        headers["X-TTC-Warmup"] = "2"
    async with (
        serve_standin("vllm", script, max_running=1) as standin,
        serve_gateway(pool_for("vllm", standin.url)) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
        await standin.engine.wait_until(lambda e: e.running == 0, 2.0)
    assert response.status_code == 200, response.text
    body = response.json()
    report = body["ttc"]
    assert report["truncated"] is True
    assert report["decisions"]["stopped"] == "budget_deadline"
    assert report["winner"]["answer"] == "7"
    assert body["usage"]["completion_tokens"] == sum(report["sample_tokens"])
