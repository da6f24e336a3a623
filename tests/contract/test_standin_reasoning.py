"""The stand-ins as reasoning models: thinking before the answer, served as a separate field
(``"field"``), as tags the model writes (``"tags"``) or after a template-opened ``<think>``
(``"opened"``); every token counts; a raw prompt with ``</think>`` continues with the answer
only; vLLM's ``thinking_token_budget`` ends the thinking early."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.standin import SampleScript, Script, serve_standin
from tests.standin.engine import render_template
from tests.standin_fixtures import chat_body, sse_events

QUESTION = "What is two plus two?"
MESSAGES = [{"role": "user", "content": QUESTION}]
THINKING = ["two", " plus", " two", " is", " four"]
ANSWER = ["The", " answer", " is", " 4."]
RENDERED = "<|user|>\nWhat is two plus two?\n<|assistant|>\n"  # 7 prompt words
CONTENT, RC = "content", "reasoning_content"
LONG_THINKING = " ".join(f"t{i}" for i in range(20))


def reasoning_script(mode: str, thinking: str = "two plus two is four", **options: Any) -> Script:
    return Script(
        samples=[SampleScript("The answer is 4.", thinking=thinking)], reasoning=mode, **options
    )


def deltas(events: list[Any]) -> list[tuple[str, str]]:
    """(field, text) of every non-empty delta of a chat stream, in order (the role left out)."""
    return [
        (key, text)
        for event in events[:-1]
        for choice in event["choices"]
        for key, text in choice["delta"].items()
        if key != "role" and text
    ]


def finish_reasons(events: list[Any]) -> list[str]:
    return [c["finish_reason"] for e in events[:-1] for c in e["choices"] if c["finish_reason"]]


async def stream_chat(flavor: str, script: Script, **extra: Any) -> list[Any]:
    body = chat_body(QUESTION, stream=True, stream_options={"include_usage": True}, **extra)
    async with (
        serve_standin(flavor, script) as standin,
        httpx.AsyncClient(base_url=standin.url) as c,
    ):
        return sse_events((await c.post("/v1/chat/completions", json=body)).text)


async def chat(flavor: str, script: Script, **extra: Any) -> dict[str, Any]:
    async with (
        serve_standin(flavor, script) as standin,
        httpx.AsyncClient(base_url=standin.url) as c,
    ):
        response = await c.post("/v1/chat/completions", json=chat_body(QUESTION, **extra))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def usages(events: list[Any]) -> list[int]:
    return [e["usage"]["completion_tokens"] for e in events[:-1] if e.get("usage")]


@pytest.mark.parametrize("flavor", ["vllm", "sglang", "llamacpp"])
async def test_field_mode_streams_thinking_as_reasoning_content_then_the_answer(
    flavor: str,
) -> None:
    events = await stream_chat(flavor, reasoning_script("field"))
    assert deltas(events) == [("reasoning_content", t) for t in THINKING] + [
        ("content", t) for t in ANSWER
    ]
    assert usages(events) == [9]


async def test_field_mode_answers_in_the_message_under_the_chosen_field_name() -> None:
    script = reasoning_script("field", reasoning_field="reasoning")
    message = (await chat("vllm", script))["choices"][0]["message"]
    assert (message["reasoning"], message["content"]) == (
        "two plus two is four",
        "The answer is 4.",
    )
    streamed = await stream_chat("vllm", script)
    assert deltas(streamed)[:2] == [("reasoning", "two"), ("reasoning", " plus")]


async def test_field_mode_logprobs_cover_the_thinking_tokens() -> None:
    answer = await chat("vllm", reasoning_script("field"), logprobs=True)
    entries = answer["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in entries] == THINKING + ANSWER


@pytest.mark.parametrize("flavor", ["vllm", "llamacpp"])
async def test_tags_mode_writes_each_tag_as_one_content_token(flavor: str) -> None:
    events = await stream_chat(flavor, reasoning_script("tags"))
    written = ["<think>", *THINKING, "</think>", "\n\n", *ANSWER]
    assert deltas(events) == [("content", t) for t in written]
    assert usages(events) == [12]
    answer = await chat(flavor, reasoning_script("tags"))
    assert answer["choices"][0]["message"]["content"] == (
        "<think>two plus two is four</think>\n\nThe answer is 4."
    )
    assert answer["usage"]["completion_tokens"] == 12


async def test_opened_mode_renders_an_open_think_and_the_content_starts_with_the_thinking() -> None:
    script = reasoning_script("opened")
    async with (
        serve_standin("llamacpp", script) as llama,
        serve_standin("vllm", script) as vllm,
        httpx.AsyncClient() as c,
    ):
        applied = (await c.post(f"{llama.url}/apply-template", json={"messages": MESSAGES})).json()
        tokens = (await c.post(f"{vllm.url}/tokenize", json={"messages": MESSAGES})).json()
        detok = (await c.post(f"{vllm.url}/detokenize", json={"tokens": tokens["tokens"]})).json()
    assert applied["prompt"] == detok["prompt"] == RENDERED + "<think>\n"
    assert render_template(MESSAGES, True, think_opened=True) == RENDERED + "<think>\n"
    events = await stream_chat("vllm", script)
    assert deltas(events) == [("content", t) for t in [*THINKING, "</think>", "\n\n", *ANSWER]]
    assert usages(events) == [11]
    answer = await chat("vllm", script)
    assert answer["usage"]["prompt_tokens"] == 5 + 4 + 1  # words, per message, the <think>


async def test_none_mode_ignores_scripted_thinking() -> None:
    answer = await chat("vllm", reasoning_script("none"))
    message = answer["choices"][0]["message"]
    assert (message["content"], message["reasoning"]) == ("The answer is 4.", None)
    assert answer["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("mode", "content", "reasoning"),
    [
        ("field", None, "two plus two"),
        ("tags", "<think>two plus", None),
        ("opened", "two plus two", None),
    ],
)
async def test_max_tokens_cuts_mid_thinking_with_length_and_no_answer(
    mode: str, content: str | None, reasoning: str | None
) -> None:
    answer = await chat("sglang", reasoning_script(mode), max_tokens=3)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "length"
    assert (choice["message"]["content"], choice["message"]["reasoning_content"]) == (
        content,
        reasoning,
    )
    assert answer["usage"]["completion_tokens"] == 3
    events = await stream_chat("sglang", reasoning_script(mode), max_tokens=3)
    streamed = {k: "".join(t for key, t in deltas(events) if key == k) for k in (CONTENT, RC)}
    assert (streamed[CONTENT] or None, streamed[RC] or None) == (content, reasoning)
    assert finish_reasons(events) == ["length"]
    assert usages(events) == [3]


async def test_every_token_counts_in_metrics_timings_and_continuous_usage() -> None:
    continuous = {"include_usage": True, "continuous_usage_stats": True}
    async with (
        serve_standin("vllm", reasoning_script("tags")) as standin,
        httpx.AsyncClient(base_url=standin.url) as c,
    ):
        body = chat_body(QUESTION, stream=True, stream_options=continuous)
        events = sse_events((await c.post("/v1/chat/completions", json=body)).text)
        metrics = (await c.get("/metrics")).text
    # role chunk, then one chunk per token, each counting the tokens so far
    assert usages(events) == [0, *range(1, 13), 12]
    assert "vllm:generation_tokens_total{" in metrics
    assert any(
        line.startswith("vllm:generation_tokens_total") and line.endswith(" 12.0")
        for line in metrics.splitlines()
    )
    llama_events = await stream_chat("llamacpp", reasoning_script("field"))
    timed = [e for e in llama_events[:-1] if "timings" in e]
    assert [e["timings"]["predicted_n"] for e in timed] == [9]


async def test_a_prompt_with_closed_thinking_continues_with_the_answer_from_the_cache() -> None:
    """The gateway's continuation of a cut thinking: rendered chat + the thinking so far +
    ``\\n</think>\\n\\n`` on the worker that produced it."""
    script = reasoning_script("tags", thinking=LONG_THINKING)
    async with (
        serve_standin("llamacpp", script) as standin,
        httpx.AsyncClient(base_url=standin.url) as c,
    ):
        cut = (await c.post("/v1/chat/completions", json=chat_body(QUESTION, max_tokens=12))).json()
        rendered = (await c.post("/apply-template", json={"messages": MESSAGES})).json()["prompt"]
        thought = cut["choices"][0]["message"]["content"]
        prompt = rendered + thought + "\n</think>\n\n"
        answer = (await c.post("/v1/completions", json={"prompt": prompt, "model": "m"})).json()
        state = (await c.get("/standin/state")).json()
    async with (
        serve_standin("llamacpp", script) as other,
        httpx.AsyncClient(base_url=other.url) as c,
    ):
        elsewhere = (await c.post("/v1/completions", json={"prompt": prompt, "model": "m"})).json()
    assert cut["choices"][0]["finish_reason"] == "length"
    assert thought == "<think>" + " ".join(f"t{i}" for i in range(11))
    assert answer["choices"][0]["text"] == "The answer is 4."
    assert answer["choices"][0]["finish_reason"] == "stop"
    # 7 rendered words + <think> + 11 thinking words + </think>; the first block was computed
    assert answer["usage"]["prompt_tokens"] == 20
    assert answer["usage"]["completion_tokens"] == 4
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 16
    assert elsewhere["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # another worker
    assert [r["path"] for r in state["requests"]] == [
        "/v1/chat/completions",
        "/apply-template",
        "/v1/completions",
    ]
    assert state["requests"][-1]["body"]["prompt"].endswith("t10\n</think>\n\n")


async def test_field_mode_continuation_hits_the_cache_of_the_parsed_answer() -> None:
    script = reasoning_script("field", thinking=LONG_THINKING)
    async with (
        serve_standin("sglang", script) as standin,
        httpx.AsyncClient(base_url=standin.url) as c,
    ):
        cut = (await c.post("/v1/chat/completions", json=chat_body(QUESTION, max_tokens=11))).json()
        thought = cut["choices"][0]["message"]["reasoning_content"]
        prompt = render_template(MESSAGES, True) + "<think>\n" + thought + "\n</think>\n\n"
        answer = (await c.post("/v1/completions", json={"prompt": prompt, "model": "m"})).json()
    assert answer["choices"][0]["text"] == "The answer is 4."
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 16


@pytest.mark.parametrize(
    ("mode", "prompt", "text", "tokens"),
    [
        ("tags", RENDERED + "<think>two plus", " two is four</think>\n\nThe answer is 4.", 9),
        ("opened", RENDERED + "<think>\ntwo plus", " two is four</think>\n\nThe answer is 4.", 9),
        ("opened", RENDERED + "<think>\ntwo plus\n</think>\n\n", "The answer is 4.", 4),
        ("tags", "Question?", "<think>two plus two is four</think>\n\nThe answer is 4.", 12),
        ("field", "Question?", "<think>two plus two is four</think>\n\nThe answer is 4.", 12),
    ],
)
async def test_a_raw_prompt_goes_on_from_where_it_stops(
    mode: str, prompt: str, text: str, tokens: int
) -> None:
    async with (
        serve_standin("vllm", reasoning_script(mode)) as standin,
        httpx.AsyncClient(base_url=standin.url) as c,
    ):
        answer = (await c.post("/v1/completions", json={"prompt": prompt, "model": "m"})).json()
    assert answer["choices"][0]["text"] == text
    assert answer["usage"]["completion_tokens"] == tokens


@pytest.mark.parametrize(
    ("mode", "content", "reasoning", "tokens"),
    [
        ("tags", "<think>two plus</think>\n\nThe answer is 4.", None, 9),
        ("opened", "two plus</think>\n\nThe answer is 4.", None, 8),
        ("field", "The answer is 4.", "two plus", 6),
    ],
)
async def test_vllm_thinking_token_budget_ends_the_thinking_and_answers(
    mode: str, content: str, reasoning: str | None, tokens: int
) -> None:
    answer = await chat("vllm", reasoning_script(mode), thinking_token_budget=2)
    message = answer["choices"][0]["message"]
    assert (message["content"], message.get("reasoning_content")) == (content, reasoning)
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] == tokens


@pytest.mark.parametrize("flavor", ["sglang", "llamacpp"])
async def test_other_engines_ignore_thinking_token_budget(flavor: str) -> None:
    answer = await chat(flavor, reasoning_script("tags"), thinking_token_budget=2)
    assert answer["choices"][0]["message"]["content"] == (
        "<think>two plus two is four</think>\n\nThe answer is 4."
    )


async def test_vllm_rejects_a_negative_thinking_token_budget() -> None:
    async with (
        serve_standin("vllm", reasoning_script("tags")) as standin,
        httpx.AsyncClient(base_url=standin.url) as c,
    ):
        response = await c.post("/v1/chat/completions", json=chat_body(thinking_token_budget=-1))
    assert response.status_code == 400


async def test_reasoning_scripts_travel_as_json_and_bad_modes_are_refused() -> None:
    script = reasoning_script("field", reasoning_field="reasoning")
    assert Script.from_json(script.to_json()) == script
    async with serve_standin("vllm") as standin, httpx.AsyncClient(base_url=standin.url) as c:
        set_ok = await c.post("/standin/script", json=script.to_json())
        answer = (await c.post("/v1/chat/completions", json=chat_body())).json()
        refused = await c.post("/standin/script", json={"reasoning": "loud"})
    assert set_ok.status_code == 200 and set_ok.json()["samples"][0]["thinking"] == (
        "two plus two is four"
    )
    assert answer["choices"][0]["message"]["reasoning"] == "two plus two is four"
    assert refused.status_code == 400
