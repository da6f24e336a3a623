"""The stand-ins themselves: their wire shapes match the real engines', and they can be
scripted and inspected from another process."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.standin import Script, bind_free_port, serve_standin
from tests.standin_fixtures import chat_body, sse_events

CAPTURES = Path(__file__).parents[2] / "deploy" / "vllm-cpu" / "captures"


def _keys(obj: dict[str, Any]) -> set[str]:
    return set(obj)


@pytest.mark.skipif(not (CAPTURES / "chat_nonstream.json").exists(), reason="no vLLM captures")
async def test_vllm_shapes_match_real_vllm_captures() -> None:
    real = json.loads((CAPTURES / "chat_nonstream.json").read_text())
    real_stream = sse_events((CAPTURES / "chat_stream_usage.sse.txt").read_text())
    body = chat_body(max_tokens=3)
    stream_body = chat_body(
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    async with serve_standin("vllm") as standin, httpx.AsyncClient(base_url=standin.url) as c:
        ours = (await c.post("/v1/chat/completions", json=body)).json()
        ours_stream = sse_events((await c.post("/v1/chat/completions", json=stream_body)).text)
    assert _keys(ours) <= _keys(real)
    assert _keys(ours["choices"][0]) == _keys(real["choices"][0])
    assert _keys(ours["choices"][0]["message"]) == _keys(real["choices"][0]["message"])
    assert ours["id"].startswith("chatcmpl-") and len(ours["id"]) == len(real["id"])
    # role chunk, token chunks, finish on the last token's chunk, then the usage chunk
    assert ours_stream[-1] == real_stream[-1] == "[DONE]"
    for mine, theirs in [(ours_stream[0], real_stream[0]), (ours_stream[-2], real_stream[-2])]:
        assert mine["choices"] == [] or mine["choices"][0]["delta"] == theirs["choices"][0]["delta"]
        assert _keys(mine) - {"prompt_token_ids", "prompt_text"} <= _keys(theirs)
    finishing = [e for e in real_stream[:-1] if e["choices"] and e["choices"][0]["finish_reason"]]
    ours_finishing = [
        e for e in ours_stream[:-1] if e["choices"] and e["choices"][0]["finish_reason"]
    ]
    assert _keys(ours_finishing[0]["choices"][0]) == _keys(finishing[0]["choices"][0])
    assert ours_finishing[0]["choices"][0]["delta"].get("content")  # last token rides along
    assert all(
        _keys(e["usage"]) >= {"prompt_tokens", "completion_tokens"} for e in ours_stream[:-1]
    )


async def test_llamacpp_stream_shape_matches_real_llamacpp() -> None:
    """Shapes observed on llama.cpp (xllamacpp): role chunk with null content, empty-delta
    finish chunk per choice, and one usage chunk (with timings) per choice."""
    body = chat_body(n=2, max_tokens=2, stream=True, stream_options={"include_usage": True})
    async with serve_standin("llamacpp") as standin, httpx.AsyncClient(base_url=standin.url) as c:
        events = sse_events((await c.post("/v1/chat/completions", json=body)).text)
    assert events[-1] == "[DONE]"
    role = events[0]
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert role["id"].startswith("chatcmpl-") and len(role["id"]) == len("chatcmpl-") + 32
    assert role["model"].endswith(".gguf")
    finishes = [e for e in events[:-1] if e["choices"] and e["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["delta"] for f in finishes] == [{}, {}]
    usages = [e for e in events[:-1] if "usage" in e]
    assert len(usages) == 2 and all(u["choices"] == [] and "timings" in u for u in usages)
    assert [u["usage"]["completion_tokens"] for u in usages] == [2, 2]


@pytest.mark.parametrize(
    ("flavor", "names"),
    [
        (
            "vllm",
            [
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:prefix_cache_queries_total",
                "vllm:prefix_cache_hits_total",
                "vllm:prompt_tokens_total",
                "vllm:generation_tokens_total",
            ],
        ),
        (
            "sglang",
            [
                "sglang:num_running_reqs",
                "sglang:num_queue_reqs",
                "sglang:prompt_tokens_total",
                "sglang:generation_tokens_total",
                "sglang:cache_hit_rate",
            ],
        ),
        (
            "llamacpp",
            [
                "llamacpp:prompt_tokens_total",
                "llamacpp:tokens_predicted_total",
                "llamacpp:requests_processing",
                "llamacpp:requests_deferred",
            ],
        ),
    ],
)
async def test_metrics_use_the_engine_names(flavor: str, names: list[str]) -> None:
    long_prompt = " ".join(f"p{i}" for i in range(40))
    async with serve_standin(flavor) as standin, httpx.AsyncClient(base_url=standin.url) as c:
        for _ in range(2):
            await c.post("/v1/chat/completions", json=chat_body(long_prompt))
        text = (await c.get("/metrics")).text
    values = {
        line.split("{")[0].split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert set(names) <= set(values)
    generated = values.get(
        f"{flavor}:generation_tokens_total", values.get("llamacpp:tokens_predicted_total")
    )
    assert generated == 2 * 7  # default answer: 3 tokens + the prompt's last 4 words
    if flavor == "vllm":
        assert values["vllm:prefix_cache_hits_total"] == 32  # 2 full 16-token blocks reused


async def test_sglang_abort_request_stops_the_named_stream() -> None:
    slow = Script.text(" ".join(f"w{i}" for i in range(400)), token_delay_s=0.01)
    body = chat_body(stream=True, rid="rid-7")
    async with (
        serve_standin("sglang", slow) as standin,
        httpx.AsyncClient(base_url=standin.url) as c,
        c.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data:"):
                break
        aborted = await c.post("/abort_request", json={"rid": "rid-7"})
        rest = "\n".join([line async for line in lines])
    assert aborted.status_code == 200
    events = sse_events(rest)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "abort"
    assert standin.engine.abort_requests == ["rid-7"]
    assert (standin.engine.aborted, standin.engine.running) == (1, 0)


async def test_cli_standin_is_scripted_and_inspected_over_http() -> None:
    sock = bind_free_port()
    port = sock.getsockname()[1]
    sock.close()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.standin", "--flavor", "sglang", "--port", str(port)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as c:
            deadline = time.monotonic() + 20
            while True:  # another process: poll its health until it answers
                try:
                    if (await c.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "stand-in did not start"
                await asyncio.sleep(0.05)
            scripted = await c.post("/standin/script", json=Script.text("Paris.").to_json())
            assert scripted.status_code == 200
            answer = (await c.post("/v1/chat/completions", json=chat_body(n=2))).json()
            broken = await c.post("/standin/script", json={"no_such_field": 1})
            state = (await c.get("/standin/state")).json()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
    assert [ch["message"]["content"] for ch in answer["choices"]] == ["Paris.", "Paris."]
    assert answer["choices"][0]["matched_stop"] is None
    assert broken.status_code == 400
    assert state["received"] == 1 and state["finished"] == 1
    assert state["requests"][0]["body"]["n"] == 2
