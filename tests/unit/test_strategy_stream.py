"""How a strategy's answer is streamed: accepted text at once, then the rest, then the report."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from gateway.metrics import GatewayMetrics
from gateway.openai.chunks import Usage
from gateway.pipeline import runner as strategy_runner
from gateway.pipeline.runner import StrategyResult, StrategyRunner
from gateway.upstream.client import RequestContext, Upstream
from gateway.upstream.pool import PoolRegistry
from strategies import Budgets, StrategyOutcome, StrategySpec

REPORT = {"strategy": "demo"}


def _runner(monkeypatch: pytest.MonkeyPatch, steps: list[str], final: str) -> StrategyRunner:
    metrics = GatewayMetrics()
    runner = StrategyRunner(PoolRegistry([]), Upstream(metrics), metrics)
    monkeypatch.setattr(strategy_runner, "HEARTBEAT_S", 0.05)

    async def fake_run(
        *args: Any, on_text: Callable[[str], Awaitable[None]] | None = None, **kwargs: Any
    ) -> StrategyResult:
        for step in steps:
            assert on_text is not None
            await on_text(step)
            await asyncio.sleep(0.08)  # long enough for a heartbeat in between
        return StrategyResult(StrategyOutcome(final, "stop"), Usage(3, 5), REPORT)

    monkeypatch.setattr(runner, "run", fake_run)
    return runner


async def _events(runner: StrategyRunner, stream_options: dict[str, Any]) -> list[Any]:
    spec = StrategySpec("demo", "", "")
    body = {"messages": [], "stream": True, "stream_options": stream_options}
    ctx = RequestContext(request_id="r1", endpoint="chat", strategy="demo")
    out = []
    async for raw in runner.stream(spec, {}, Budgets(), body, ctx, "m"):
        text = raw.decode()
        out.append(
            text.strip()
            if text.startswith(":")
            else text[6:].strip()
            if text.strip() == "data: [DONE]"
            else orjson.loads(text[6:])
        )
    return out


async def test_accepted_steps_stream_first_then_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = _runner(monkeypatch, ["step one\n\n", "step two\n\n"], "step one\n\nstep two\n\nok")
    events = await _events(runner, {"include_usage": True})
    chunks = [e for e in events if isinstance(e, dict)]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert contents[:3] == ["step one\n\n", "step two\n\n", "ok"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert ": deciding" in events
    finish = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    assert finish["ttc"] == REPORT
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert events[-1] == "[DONE]"


async def test_without_accepted_text_the_whole_answer_comes_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = _runner(monkeypatch, [], "the answer is 4")
    events = await _events(runner, {})
    chunks = [e for e in events if isinstance(e, dict)]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "the answer is 4"}
    assert not any("usage" in c for c in chunks)
