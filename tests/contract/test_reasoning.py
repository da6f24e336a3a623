"""Reasoning models through the gateway, against the stand-in's reasoning flavours: thinking
as ``reasoning_content`` deltas (``field``), as ``<think>`` tags the model writes (``tags``) or
after a template-opened ``<think>`` (``opened``).

Pinned here: votes read answers only; usage counts thinking and answer; the answer carries the
winner's thinking in ``reasoning_content``; a thinking budget cuts at exactly t tokens and
continues on the same worker with a prompt ending in the delimiter; ``reasoning_effort`` maps
to the configured budget; vLLM's native budget; pools that cannot take a budget."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import strategies
from gateway.config import ReasoningConfig, ThinkingConfig
from gateway.pipeline.sampler import PoolSampler, UpstreamBatch
from strategies import StrategyOutcome, StrategySpec, StrategyTask
from tests.standin import SampleScript, Script, serve_standin
from tests.standin_fixtures import chat_body, pool_for, serve_gateway, sse_events

END = "\n</think>\n\n"


def thinker(mode: str, *samples: tuple[str, str], **options: Any) -> Script:
    """One scripted sample per (thinking, answer)."""
    return Script(
        samples=[SampleScript(answer, thinking=thinking) for thinking, answer in samples],
        reasoning=mode,
        **options,
    )


def vote(k: int, **headers: str) -> dict[str, str]:
    return {"X-TTC-Strategy": "majority_vote", "X-TTC-K": str(k), **headers}


# Thinking that names numbers other than the answer: a vote read from it would pick 9.
SAMPLES = (
    ("maybe 9 or 9", "The answer is 4."),
    ("surely 9", "The answer is 4."),
    ("I think 9", "The answer is 5."),
)


@pytest.mark.parametrize(
    ("mode", "thinking"),
    [("field", "auto"), ("tags", "auto"), ("opened", "opened")],
)
async def test_votes_read_answers_only_and_usage_counts_the_thinking(
    mode: str, thinking: Any
) -> None:
    async with (
        serve_standin("vllm", thinker(mode, *SAMPLES)) as engine,
        serve_gateway(
            pool_for("vllm", engine.url, reasoning=ReasoningConfig(thinking=thinking))
        ) as gw,
    ):
        response = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=vote(3))
    body = response.json()
    report = body["ttc"]
    assert report["votes"] == {"4": 2, "5": 1}
    message = body["choices"][0]["message"]
    assert message["content"] == "The answer is 4."
    assert message["reasoning_content"].strip() == SAMPLES[report["winner"]["sample"]][0]
    # tokens: the thinking's words (plus the two tags in tags/opened mode), "\n\n" and the
    # answer's 4 words in the tag modes; the thinking's words and the answer's in field mode
    tags = 0 if mode == "field" else 1 + (mode == "tags")
    thinking_tokens = [len(t.split()) + tags for t, _ in SAMPLES]
    answer_tokens = [4 + (mode != "field")] * 3
    assert [s["thinking_tokens"] for s in report["thinking"]["samples"]] == thinking_tokens
    usage = body["usage"]
    assert usage["completion_tokens"] == sum(thinking_tokens) + sum(answer_tokens)
    assert usage["completion_tokens_details"]["reasoning_tokens"] == sum(thinking_tokens)
    assert report["sample_tokens"] == [
        t + a for t, a in zip(thinking_tokens, answer_tokens, strict=True)
    ]


async def test_a_budget_cuts_thinking_at_t_and_continues_on_the_same_worker() -> None:
    long = " ".join(f"t{i}" for i in range(20))
    script = thinker("tags", (long, "The answer is 4."), (long, "The answer is 4."))
    async with (
        serve_standin("llamacpp", script) as a,
        serve_standin("llamacpp", script) as b,
        serve_gateway(pool_for("llamacpp", a.url, b.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers=vote(2, **{"X-TTC-Thinking-Budget": "12", "X-TTC-Answer-Budget": "6"}),
        )
        calls = [r for s in (a, b) for r in s.engine.requests if r.path.startswith("/v1/")]
        by_worker = {
            s.url: [r.path for r in s.engine.requests if r.path.startswith("/v1/")] for s in (a, b)
        }
    body = response.json()
    report = body["ttc"]
    assert report["thinking"] == {
        "budget": 12,
        "answer_budget": 6,
        "enforced_by": "gateway",
        "samples": [{"thinking_tokens": 12, "cut": True, "continued": True}] * 2,
    }
    firsts = [c for c in calls if c.path == "/v1/chat/completions"]
    continuations = [c for c in calls if c.path == "/v1/completions"]
    assert [c.body["max_tokens"] for c in firsts] == [12, 12]  # the cut is the engine's
    assert [c.body["n"] for c in firsts] == [1, 1]  # one request per sample
    assert len(continuations) == 2
    for call in continuations:
        # the rendered chat, the thinking so far (the opening tag and 11 words), the delimiter
        assert call.body["prompt"].endswith("<think>t0 t1 t2 t3 t4 t5 t6 t7 t8 t9 t10" + END)
        assert call.body["max_tokens"] == 6
        assert "messages" not in call.body
    # each continuation on its sample's worker
    placement = report["placement"]
    assert [p.get("continues") for p in placement[:2]] == [None, None]
    continued = {p["continues"]: p for p in placement[2:]}
    assert sorted(continued) == [0, 1]
    for sample, call in continued.items():
        assert call["worker"] == placement[sample]["worker"]
        assert call["cached_tokens"] >= 16  # its prompt and thinking were cached
    for paths in by_worker.values():  # the routing policy places the samples; each
        # continuation follows its sample to its worker
        assert paths.count("/v1/completions") == paths.count("/v1/chat/completions")
    message = body["choices"][0]["message"]
    assert message["content"] == "The answer is 4."
    assert message["reasoning_content"] == "t0 t1 t2 t3 t4 t5 t6 t7 t8 t9 t10"
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == 2 * (12 + 4) == sum(report["sample_tokens"])
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 24
    assert usage["prompt_tokens"] == sum(p["prompt_tokens"] for p in placement)


async def test_a_sample_thinking_within_the_budget_is_not_continued() -> None:
    script = thinker("field", ("short", "The answer is 4."))
    async with (
        serve_standin("vllm", script) as engine,
        serve_gateway(pool_for("vllm", engine.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-TTC-Thinking-Budget": "32"}
        )
        paths = [r.path for r in engine.engine.requests if r.path.startswith("/v1/")]
    body = response.json()
    assert paths == ["/v1/chat/completions"]
    assert body["ttc"]["strategy"] == "single"
    assert body["ttc"]["thinking"]["samples"] == [
        {"thinking_tokens": 1, "cut": False, "continued": False}
    ]
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "The answer is 4.",
        "reasoning_content": "short",
    }


async def test_a_sample_the_model_ends_while_still_thinking_is_asked_for_its_answer() -> None:
    """End of sequence before ``</think>`` would leave the sample with no answer: under a
    budget the gateway closes the thinking and continues it, like a cut (but not ``cut``).
    A stop string of the client's ends it as asked."""
    script = Script(samples=[SampleScript("The answer is 4.")])  # never writes </think>
    opened = ReasoningConfig(thinking="opened")
    async with (
        serve_standin("vllm", script) as engine,
        serve_gateway(pool_for("vllm", engine.url, reasoning=opened)) as gw,
    ):
        ended = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-TTC-Thinking-Budget": "32"}
        )
        stopped = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(stop=[" is"]),
            headers={"X-TTC-Thinking-Budget": "32"},
        )
        sent = [(r.path, r.body) for r in engine.engine.requests if r.path.startswith("/v1/")]
    body = ended.json()
    assert body["ttc"]["thinking"]["samples"] == [
        {"thinking_tokens": 4, "cut": False, "continued": True}
    ]
    assert [path for path, _ in sent[:2]] == ["/v1/chat/completions", "/v1/completions"]
    assert sent[1][1]["prompt"].endswith("The answer is 4." + END)
    assert sent[1][1]["max_tokens"] == 2048  # the default answer budget
    message = body["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == (
        "The answer is 4.",
        "The answer is 4.",
    )
    usage = body["usage"]
    assert usage["completion_tokens"] == 4 + 4 == sum(body["ttc"]["sample_tokens"])
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 4
    # the stop string: one call, its thinking and no answer, as the client asked
    assert [path for path, _ in sent[2:]] == ["/v1/chat/completions"]
    assert stopped.json()["ttc"]["thinking"]["samples"] == [
        {"thinking_tokens": 2, "cut": False, "continued": False}
    ]
    assert stopped.json()["choices"][0]["message"]["reasoning_content"] == "The answer"


async def test_the_budget_streams_reasoning_content_then_content() -> None:
    long = " ".join(f"w{i}" for i in range(10))
    script = thinker("opened", (long, "The answer is 4."))
    async with (
        serve_standin("vllm", script) as engine,
        serve_gateway(
            pool_for("vllm", engine.url, reasoning=ReasoningConfig(thinking="opened"))
        ) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(stream=True, stream_options={"include_usage": True}),
            headers={"X-TTC-Thinking-Budget": "4"},
        )
    events = sse_events(response.text)
    fields = [
        (key, text)
        for event in events[:-1]
        for choice in event.get("choices", [])
        for key, text in choice["delta"].items()
        if key in ("content", "reasoning_content") and text
    ]
    assert fields == [("reasoning_content", "w0 w1 w2 w3"), ("content", "The answer is 4.")]
    usage = events[-2]["usage"]
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 4}
    assert usage["completion_tokens"] == 4 + 4


async def test_reasoning_effort_maps_to_the_configured_budget_and_is_not_forwarded() -> None:
    long = " ".join(f"t{i}" for i in range(20))
    script = thinker("field", (long, "The answer is 4."))
    async with (
        serve_standin("vllm", script) as engine,
        serve_gateway(
            pool_for("vllm", engine.url),
            thinking=ThinkingConfig(effort_budgets={"low": 5, "none": 0}, answer_budget=7),
        ) as gw,
    ):
        low = await gw.client.post("/v1/chat/completions", json=chat_body(reasoning_effort="low"))
        none = await gw.client.post("/v1/chat/completions", json=chat_body(reasoning_effort="none"))
        unknown = await gw.client.post(
            "/v1/chat/completions", json=chat_body(reasoning_effort="high")
        )
        header_wins = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(reasoning_effort="low"),
            headers={"X-TTC-Thinking-Budget": "3"},
        )
        sent = [r.body for r in engine.engine.requests if r.path.startswith("/v1/")]
    assert low.json()["ttc"]["thinking"]["budget"] == 5
    assert low.json()["ttc"]["thinking"]["samples"] == [
        {"thinking_tokens": 5, "cut": True, "continued": True}
    ]
    assert low.json()["ttc"]["thinking"]["answer_budget"] == 7
    assert none.json()["ttc"]["thinking"]["samples"] == [
        {"thinking_tokens": 0, "cut": True, "continued": False}
    ]
    assert "reasoning_content" not in none.json()["choices"][0]["message"]
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "reasoning_effort"
    assert "low, none" in unknown.json()["error"]["message"]
    assert header_wins.json()["ttc"]["thinking"]["budget"] == 3
    assert all("reasoning_effort" not in body for body in sent)
    # "none": straight to the answer, after an empty thinking closed at once
    assert sent[2]["prompt"].endswith("<think>\n" + END)
    assert sent[2]["max_tokens"] == 7


async def test_vllm_native_budget_is_the_engines_and_nothing_is_continued() -> None:
    long = " ".join(f"t{i}" for i in range(20))
    script = thinker("field", (long, "The answer is 4."))
    async with (
        serve_standin("vllm", script) as engine,
        serve_gateway(
            pool_for("vllm", engine.url, reasoning=ReasoningConfig(native_budget=True))
        ) as gw,
    ):
        voted = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers=vote(2, **{"X-TTC-Thinking-Budget": "3", "X-TTC-Answer-Budget": "10"}),
        )
        single = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-TTC-Thinking-Budget": "2"}
        )
        sent = [(r.path, r.body) for r in engine.engine.requests if r.path.startswith("/v1/")]
    assert [path for path, _ in sent] == ["/v1/chat/completions"] * 2
    assert sent[0][1]["thinking_token_budget"] == 3 and sent[0][1]["max_tokens"] == 13
    assert sent[1][1]["thinking_token_budget"] == 2 and sent[1][1]["max_tokens"] == 2 + 2048
    report = voted.json()["ttc"]
    assert (
        report["thinking"]["samples"]
        == [{"thinking_tokens": 3, "cut": True, "continued": False}] * 2
    )
    assert report["thinking"]["enforced_by"] == "engine"
    assert voted.json()["choices"][0]["message"]["content"] == "The answer is 4."
    # single stays the pass-through: the engine's own answer, its reasoning_content included
    assert single.json()["choices"][0]["message"]["reasoning_content"] == "t0 t1"


async def test_a_pool_that_cannot_render_refuses_a_gateway_budget_naming_the_field() -> None:
    async with (
        serve_standin("sglang") as engine,
        serve_gateway(pool_for("sglang", engine.url)) as gw,
    ):
        header = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-TTC-Thinking-Budget": "8"}
        )
        field = await gw.client.post(
            "/v1/chat/completions", json=chat_body(ttc={"thinking_budget": 8})
        )
        answer_only = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-TTC-Answer-Budget": "8"}
        )
        sent = [r for r in engine.engine.requests if r.path.startswith("/v1/")]
    assert header.status_code == field.status_code == answer_only.status_code == 400
    assert header.json()["error"]["code"] == "thinking_budget_unsupported"
    assert header.json()["error"]["param"] == "X-TTC-Thinking-Budget"
    assert field.json()["error"]["param"] == "ttc.thinking_budget"
    assert answer_only.json()["error"]["param"] == "X-TTC-Answer-Budget"
    assert sent == []  # nothing reached the engine


async def test_what_a_gateway_budget_cannot_carry_is_refused_naming_the_field() -> None:
    budget = {"X-TTC-Thinking-Budget": "8"}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    async with (
        serve_standin("vllm") as engine,
        serve_gateway(pool_for("vllm", engine.url)) as gw,
    ):
        n2 = await gw.client.post("/v1/chat/completions", json=chat_body(n=2), headers=budget)
        tools = await gw.client.post(
            "/v1/chat/completions", json=chat_body(tools=[tool]), headers=budget
        )
        schema = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(response_format={"type": "json_object"}),
            headers={**budget, "X-TTC-Strategy": "majority_vote"},
        )
        sent = [r for r in engine.engine.requests if r.path.startswith("/v1/")]
    assert [r.status_code for r in (n2, tools, schema)] == [400, 400, 400]
    assert [r.json()["error"]["param"] for r in (n2, tools, schema)] == [
        "n",
        "tools",
        "response_format",
    ]
    assert sent == []


# -- continuations and the strategy's own stops -------------------------------------------
def strategy(name: str, run: Any) -> StrategySpec:
    return StrategySpec(name=name, summary="", source="", parameters=(), run=run)


async def test_cancelling_a_cut_sample_before_its_continuation_starts_loses_no_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A strategy that kills a trace the moment it is handed to a continuation (as deepconf
    kills traces) and reads on: the batch ends at once, not at the deadline."""
    ends: list[tuple[int, str]] = []

    async def kill_cut(task: StrategyTask) -> StrategyOutcome:
        batch = await task.sampler.start(task.request, 2, task.role)
        assert isinstance(batch, UpstreamBatch)
        async for delta in batch.events():
            if delta.sample in batch.continuing and delta.sample not in batch.cancelled:
                await batch.cancel([delta.sample])
            if delta.finish_reason:
                ends.append((delta.sample, delta.finish_reason))
        return StrategyOutcome(content="x", finish_reason="stop", winner=1)

    monkeypatch.setitem(strategies.REGISTRY, "kill_cut", strategy("kill_cut", kill_cut))
    script = Script(
        samples=[
            SampleScript("The answer is 4.", thinking=" ".join(f"t{i}" for i in range(20))),
            SampleScript("The answer is 4.", thinking="a", token_delay_s=0.05),
        ],
        reasoning="field",
        draw=True,
    )
    async with (
        serve_standin("vllm", script) as engine,
        serve_gateway(pool_for("vllm", engine.url)) as gw,
    ):
        started = time.perf_counter()
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={
                "X-TTC-Strategy": "kill_cut",
                "X-TTC-Thinking-Budget": "5",
                "X-TTC-Deadline-Ms": "3000",
            },
        )
        took = time.perf_counter() - started
        paths = [r.path for r in engine.engine.requests if r.path.startswith("/v1/")]
        in_flight = await gw.in_flight()
    assert response.status_code == 200 and took < 1.5, (took, response.text)
    assert ends == [(1, "stop")]  # the killed one never finishes; the other does
    assert "/v1/completions" not in paths  # nothing was opened for the killed sample
    assert response.json()["ttc"]["samples"]["aborted"] == 1
    assert set(in_flight.values()) == {0}


async def test_a_continuation_being_opened_when_the_strategy_returns_is_not_left_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The strategy returns while a continuation waits for its worker: nothing keeps running
    or holding the worker after the answer, and every call that ran is billed."""

    async def leave_early(task: StrategyTask) -> StrategyOutcome:
        batch = await task.sampler.start(task.request, 2, task.role)
        assert isinstance(batch, UpstreamBatch)
        async for _ in batch.events():
            if batch.continuing:  # a continuation was just scheduled: decide now
                break
        return StrategyOutcome(content="x", finish_reason="stop", winner=0)

    opened: list[float] = []
    open_continuation = PoolSampler.open_continuation

    async def slow_open(self: PoolSampler, *args: Any) -> Any:
        await asyncio.sleep(0.3)  # waiting for the worker's slot
        opened.append(time.perf_counter())
        return await open_continuation(self, *args)

    monkeypatch.setattr(PoolSampler, "open_continuation", slow_open)
    monkeypatch.setitem(strategies.REGISTRY, "leave", strategy("leave", leave_early))
    script = Script(
        samples=[
            SampleScript("The answer is 4. " * 20, thinking="a b", token_delay_s=0.05),
            SampleScript("The answer is 4.", thinking=" ".join(f"t{i}" for i in range(20))),
        ],
        reasoning="tags",
        draw=True,
    )
    async with (
        serve_standin("llamacpp", script) as engine,
        serve_gateway(pool_for("llamacpp", engine.url)) as gw,
    ):
        response = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={"X-TTC-Strategy": "leave", "X-TTC-Thinking-Budget": "5"},
        )
        answered = time.perf_counter()
        await asyncio.sleep(0.6)
        paths = [r.path for r in engine.engine.requests if r.path.startswith("/v1/")]
        in_flight = await gw.in_flight()
    assert response.status_code == 200
    assert set(in_flight.values()) == {0}
    assert "/v1/completions" not in paths and all(t <= answered for t in opened)
    usage, placement = response.json()["usage"], response.json()["ttc"]["placement"]
    assert usage["completion_tokens"] == sum(p["completion_tokens"] for p in placement)
