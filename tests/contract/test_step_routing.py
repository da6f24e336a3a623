"""GlimpRouter and Speculative Thinking through the gateway: a llama.cpp ``small`` pool (two
workers) and a vLLM ``large`` pool, both stand-ins. Pins what each call sends (prompt rendered
by each role's engine, thinking opened, steps appended; glimpse and probe parameters), that the
thinking comes as ``reasoning_content`` and the large model's answer as ``content`` (streamed
in that order), that each role stays on one worker, the decisions metric and the usage."""

from __future__ import annotations

from typing import Any

from strategies.steps import entropy
from tests.standin import RunningStandin, SampleScript, Script, serve_standin
from tests.standin.engine import render_template
from tests.standin_fixtures import chat_body, pool_for, serve_gateway, sse_events

QUESTION = "What is two plus two?"
RENDERED = render_template([{"role": "user", "content": QUESTION}], True)
# The stand-in's top alternatives of a token are its log-prob and 1, 2, ... 19 below it.
STANDIN_ENTROPY = entropy({f"t{j}": -float(j) for j in range(20)}) or 0.0
assert 1.0 < STANDIN_ENTROPY < 1.1


def drawn(*texts: str) -> Script:
    """Each request takes the next text."""
    return Script(draw=True, samples=[SampleScript(t) for t in texts])


def completions(standin: RunningStandin) -> list[dict[str, Any]]:
    return [r.body for r in standin.engine.requests if r.path == "/v1/completions"]


async def ask(
    strategy: str, small: Script, large: Script, headers: dict[str, str], stream: bool
) -> tuple[dict[str, Any], list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """The answer (streamed: its events), each small worker's calls, the large worker's."""
    async with (
        serve_standin("llamacpp", small) as s1,
        serve_standin("llamacpp", small) as s2,
        serve_standin("vllm", large, served_model="engine-model") as big,
        serve_gateway(
            pool_for("llamacpp", s1.url, s2.url, name="s", model="tiny", roles=["small"]),
            pool_for("vllm", big.url, name="l", roles=["large"]),
        ) as gw,
    ):
        body = chat_body(QUESTION, stream=stream, stream_options={"include_usage": True})
        if not stream:
            del body["stream_options"]
        response = await gw.client.post(
            "/v1/chat/completions", json=body, headers={"X-TTC-Strategy": strategy, **headers}
        )
        assert response.status_code == 200, response.text
        assert await gw.in_flight() == {s1.url: 0, s2.url: 0, big.url: 0}
        counted = {
            d: await gw.metric("ttc_strategy_decisions_total", strategy=strategy, decision=d)
            for d in ("small", "large", "recap", "verify")
        }
    answer = {"events": sse_events(response.text)} if stream else response.json()
    answer["counted"] = counted
    return answer, [completions(s1), completions(s2)], completions(big)


def split_stream(events: list[Any]) -> tuple[list[tuple[str, str]], dict[str, Any], Any]:
    """The (field, text) deltas in order, the ``ttc`` report, the usage."""
    assert events[-1] == "[DONE]"
    deltas = [
        (field, e["choices"][0]["delta"][field])
        for e in events[:-1]
        if e.get("choices")
        for field in ("reasoning_content", "content")
        if e["choices"][0]["delta"].get(field)
    ]
    report = next(e["ttc"] for e in events[:-1] if "ttc" in e)
    return deltas, report, events[-2]["usage"]


async def test_glimp_router_low_entropy_steps_stream_as_reasoning_then_the_large_answer() -> None:
    small = drawn("x", "First add.\n\nx", "x", "Then done.\n</think>\n\nmore")
    answer, small_calls, large_calls = await ask(
        "glimp_router", small, drawn("The answer is 4."), {"X-TTC-Threshold": "1.1"}, True
    )
    deltas, report, usage = split_stream(answer["events"])
    fields = [f for f, _ in deltas]
    assert fields == ["reasoning_content", "reasoning_content", "content"]  # thinking first
    assert [t for _, t in deltas] == ["First add.", "\n\nThen done.", "The answer is 4."]
    decisions = report["decisions"]
    assert [(s["by"], s["entropy"]) for s in decisions["steps"]] == [
        ("small", round(STANDIN_ENTROPY, 4))
    ] * 2  # 1.0407 < 1.1
    assert decisions["stopped"] == "end_of_thinking"
    assert answer["counted"] == {"small": 2.0, "large": 0.0, "recap": 0.0, "verify": 0.0}
    # every small call on one worker: two glimpses and two steps, each continuing the thinking
    calls = max(small_calls, key=len)
    assert sorted(len(c) for c in small_calls) == [0, 4]
    opened = RENDERED + "<think>\n"
    assert [c["prompt"] for c in calls] == [opened, opened] + [opened + "First add.\n\n"] * 2
    glimpse = calls[0]
    assert (glimpse["max_tokens"], glimpse["temperature"], glimpse["logprobs"]) == (1, 0.0, 20)
    assert calls[1]["stop"] == ["\n\n"] and calls[1]["max_tokens"] == 512
    (final,) = large_calls
    assert final["prompt"] == opened + "First add.\n\nThen done.\n</think>\n\n"
    assert final["max_tokens"] == 2048 and "stop" not in final
    # 2 one-token glimpses, steps of 2 and 3 streamed tokens, each + the cut "\n\n" token
    # llama.cpp sends no chunk for (its usage counts it: billed), an answer of 4
    steps = decisions["steps"]
    assert [s["tokens"] for s in steps] == [2, 3] and decisions["answer_tokens"] == 4
    assert usage["completion_tokens"] == 1 + (2 + 1) + 1 + (3 + 1) + 4
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 2 + 3}  # the kept steps
    assert usage["completion_tokens"] == sum(report["sample_tokens"])


async def test_glimp_router_high_entropy_steps_go_to_the_large_model() -> None:
    large = drawn("Add them.\n\nz", "Add them.\n\nz", "So 4.")
    answer, small_calls, large_calls = await ask(
        "glimp_router", drawn("x"), large, {"X-TTC-Max-Steps": "5"}, False
    )
    message = answer["choices"][0]["message"]
    assert message["reasoning_content"] == "Add them.\n\nAdd them."
    assert message["content"] == "So 4."
    decisions = answer["ttc"]["decisions"]
    assert [s["by"] for s in decisions["steps"]] == ["large", "large"]  # 1.0407 >= 1.0
    assert decisions["stopped"] == "repeated_step"
    assert answer["counted"] == {"small": 0.0, "large": 2.0, "recap": 0.0, "verify": 0.0}
    assert sorted(len(c) for c in small_calls) == [0, 2]  # the glimpses only
    assert [c["prompt"] for c in large_calls] == [
        RENDERED + "<think>\n",
        RENDERED + "<think>\nAdd them.\n\n",
        RENDERED + "<think>\nAdd them.\n\nAdd them.\n</think>\n\n",
    ]
    # vLLM counts the "\n\n" token it cut: steps of 3, glimpses of 1, an answer of 2
    assert answer["usage"]["completion_tokens"] == 2 * 1 + 2 * 3 + 2


async def test_speculative_thinking_hands_a_negative_paragraph_to_the_large_model() -> None:
    small = drawn("First, 2 + 2.\n\nx", "Wait, is that", " 2 + 2 is 4.\n\nx")
    large = drawn("Hold on, let me check it again", "The answer is 4.")
    answer, small_calls, large_calls = await ask(
        "speculative_thinking",
        small,
        large,
        {"X-TTC-Probe-Tokens": "4", "X-TTC-Max-Steps": "2"},
        True,
    )
    deltas, report, usage = split_stream(answer["events"])
    assert deltas == [
        ("reasoning_content", "First, 2 + 2."),
        ("reasoning_content", "\n\nHold on, let me"),  # LARGE's probe, cut at 4 tokens
        ("reasoning_content", " 2 + 2 is 4."),
        ("content", "The answer is 4."),
    ]
    decisions = report["decisions"]
    steps = decisions["steps"]
    assert [(s["by"], s["sentiment"], s["large_sentiment"]) for s in steps] == [
        ("small", None, None),
        ("large", -1, -1),
    ]
    assert decisions["stopped"] == "max_steps"
    assert answer["counted"] == {"small": 1.0, "large": 1.0, "recap": 0.0, "verify": 0.0}
    calls = max(small_calls, key=len)
    assert sorted(len(c) for c in small_calls) == [0, 3]
    opened = RENDERED + "<think>\n"
    assert [c["prompt"] for c in calls] == [
        opened,
        opened + "First, 2 + 2.\n\n",  # SMALL's probe
        opened + "First, 2 + 2.\n\nHold on, let me",  # SMALL goes on after LARGE's
    ]
    assert calls[1]["max_tokens"] == 4 and "stop" not in calls[1]
    probe, final = large_calls
    assert probe["prompt"] == opened + "First, 2 + 2.\n\n" and probe["max_tokens"] == 4
    assert final["prompt"] == opened + "First, 2 + 2.\n\nHold on, let me 2 + 2 is 4.\n</think>\n\n"
    # kept 4 + 4 + 5, SMALL's probe 3 (not kept), the answer 4
    assert [s["tokens"] for s in steps] == [4, 4 + 5] and steps[1]["probe_tokens"] == 3
    # + the "\n\n" two paragraphs were cut at: generated, not streamed, billed (llama.cpp)
    assert usage["completion_tokens"] == 4 + 3 + 4 + 5 + 4 + 2 == sum(report["sample_tokens"])
