"""Runs a test-time-compute strategy for one request and shapes its answer.

The answer stays a valid OpenAI ``chat.completion`` (or chunk stream). ``usage`` sums every
sample of every batch, aborted ones included. A ``ttc`` object and ``X-TTC-*`` headers report
what the strategy did: samples launched/finished/aborted/failed, each sample's tokens, votes,
winner, tokens generated after the decision ("wasted"), time to decision, truncation.

Streaming clients get SSE comment heartbeats while the strategy decides, then the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError, InternalError, bad_gateway
from gateway.metrics import GatewayMetrics
from gateway.openai.chunks import Usage
from gateway.openai.sse import encode_comment, encode_done, encode_event
from gateway.pipeline.sampler import BudgetGuard, PoolSampler
from gateway.tasks import finish_even_if_cancelled
from gateway.upstream.client import RequestContext, Upstream
from gateway.upstream.pool import PoolRegistry
from strategies import Budgets, StrategyOutcome, StrategySpec, StrategyTask
from strategies.answers import AnswerBuckets, SameAnswer
from strategies.sampling import SampleRequest, ThinkingBudget

log = logging.getLogger("ttc.strategies")

HEARTBEAT_S = 1.0


def cost_headers(report: dict[str, Any]) -> dict[str, str]:
    """``X-TTC-Cost-USD`` and ``X-TTC-Energy-J`` from a report that has cost and energy."""
    if "cost_usd" not in report:
        return {}
    return {
        "X-TTC-Cost-USD": f"{report['cost_usd']:.8g}",
        "X-TTC-Energy-J": f"{report['energy_joules']:.6g}",
        "X-TTC-Energy-Method": report["energy"]["method"],
    }


def worker_header(ctx: RequestContext) -> dict[str, str]:
    """``X-TTC-Worker``: the workers that served the request so far, by name (never their
    address), comma-separated when its calls went to several."""
    return {"X-TTC-Worker": ", ".join(ctx.workers)} if ctx.workers else {}


def message(outcome: StrategyOutcome) -> dict[str, Any]:
    """The answer's ``message``: the winner's thinking in ``reasoning_content`` (vLLM's field)
    when it thought, its answer in ``content``."""
    out: dict[str, Any] = {"role": "assistant", "content": outcome.content}
    if outcome.reasoning:
        out["reasoning_content"] = outcome.reasoning
    return out


@dataclass
class StrategyResult:
    outcome: StrategyOutcome
    usage: Usage
    report: dict[str, Any]

    def headers(self) -> dict[str, str]:
        samples = self.report["samples"]
        return {
            "X-TTC-Strategy": self.report["strategy"],
            "X-TTC-Samples-Launched": str(samples["launched"]),
            "X-TTC-Samples-Finished": str(samples["finished"]),
            "X-TTC-Samples-Aborted": str(samples["aborted"]),
            "X-TTC-Wasted-Tokens": str(self.report["wasted_tokens"]),
            "X-TTC-Time-To-Decision-Ms": str(self.report["time_to_decision_ms"]),
            "X-TTC-Truncated": "true" if self.report["truncated"] else "false",
            **({"X-TTC-Worker": self.report["worker"]} if self.report["worker"] else {}),
            **cost_headers(self.report),
        }


class StrategyRunner:
    """Builds the sampler for a request, runs the strategy, and accounts for it."""

    def __init__(
        self,
        pools: PoolRegistry,
        upstream: Upstream,
        metrics: GatewayMetrics,
        same_answer: SameAnswer | None = None,
    ) -> None:
        self.pools = pools
        self.upstream = upstream
        self.metrics = metrics
        self.same_answer = same_answer  # answers.equivalence; None: exact answer keys

    async def run(
        self,
        spec: StrategySpec,
        params: dict[str, Any],
        budgets: Budgets,
        body: dict[str, Any],
        ctx: RequestContext,
        model: str,
        on_text: Callable[[str], Awaitable[None]] | None = None,
        on_reasoning: Callable[[str], Awaitable[None]] | None = None,
    ) -> StrategyResult:
        assert spec.run is not None
        guard = BudgetGuard(
            ctx.arrived + ctx.deadline_s,
            budgets.max_tokens_total,
            budgets.max_cost_usd,
            ctx.counted_prompt_tokens or 0,
        )
        sampler = PoolSampler(self.pools, self.upstream, ctx, model, guard)
        decision: dict[str, float] = {}

        def decided() -> None:
            if not decision:  # the first call is the decision
                decision["at"] = time.perf_counter()
                decision["tokens"] = sampler.usage().completion_tokens

        thinking = None
        if budgets.thinking_budget is not None:
            thinking = ThinkingBudget(budgets.thinking_budget, budgets.answer_budget or 1)
        task = StrategyTask(
            request=SampleRequest(messages=body["messages"], params=body, thinking=thinking),
            params=params,
            sampler=sampler,
            decided=decided,
            on_text=on_text,
            on_reasoning=on_reasoning,
            answers=AnswerBuckets(self.same_answer),
        )
        try:
            outcome = await spec.run(task)
        finally:  # counted to the end before the request is settled, even if cancelled
            await finish_even_if_cancelled(sampler.close())
        usage = sampler.usage()
        if outcome.thinking_tokens is not None:  # a step-wise strategy's kept thinking
            usage.reasoning_tokens = outcome.thinking_tokens
        counts = sampler.sample_counts()
        if counts["failed"] and not counts["finished"] and not outcome.truncated:
            # Nothing to answer from: the workers broke every sample (their tokens are
            # counted all the same).
            self._count_samples(spec.name, counts)
            raise bad_gateway(
                f"every sample of {spec.name} failed upstream ({counts['failed']} of "
                f"{counts['launched']}): the worker broke the connection or the protocol"
            )
        decided()
        report = {
            "strategy": spec.name,
            "parameters": params,
            "samples": counts,
            "worker": ", ".join(ctx.workers),
            "placement": sampler.placement(),
            "sample_tokens": sampler.sample_tokens(),
            "votes": outcome.votes,
            "winner": {"sample": outcome.winner, "answer": outcome.answer},
            "wasted_tokens": max(0, usage.completion_tokens - int(decision["tokens"])),
            "time_to_decision_ms": round((decision["at"] - ctx.arrived) * 1000, 1),
            "truncated": outcome.truncated,
            "estimated_prompt_tokens": usage.estimated_prompt_tokens,
            "thinking": {
                "budget": budgets.thinking_budget,
                "answer_budget": budgets.answer_budget,
                # the engine's own control, the gateway's cut, or both (roles on two pools);
                # a step-wise strategy caps its own thinking: the gateway
                "enforced_by": None
                if budgets.thinking_budget is None
                else ", ".join(sorted(sampler.budget_enforcers)) or "gateway",
                "samples": sampler.thinking(),
            },
            "early_stop_saved_tokens": sampler.tokens_saved_by_early_stop(
                body.get("max_completion_tokens") or body.get("max_tokens")
            ),
            **({"decisions": outcome.report} if outcome.report else {}),
        }
        if ctx.meter is not None and self.upstream.meter is not None:
            report.update(await self.upstream.meter.report(ctx.meter))
        self._observe(spec.name, model, report, outcome, usage)
        return StrategyResult(outcome, usage, report)

    def _observe(
        self,
        strategy: str,
        model: str,
        report: dict[str, Any],
        outcome: StrategyOutcome,
        usage: Usage,
    ) -> None:
        """The strategy's economics, as metrics (its thinking: the answer's reasoning_tokens)."""
        m = self.metrics
        m.time_to_decision.labels(strategy, model).observe(report["time_to_decision_ms"] / 1000)
        self._count_samples(strategy, report["samples"])
        m.tokens.labels(strategy, model, "default", "wasted").inc(report["wasted_tokens"])
        m.tokens.labels(strategy, model, "default", "thinking").inc(usage.reasoning_tokens or 0)
        thinking = report["thinking"]["samples"]
        m.thinking_cuts.labels(strategy, model).inc(sum(sample["cut"] for sample in thinking))
        decisions = report.get("decisions") or {}
        if "agreement" in decisions and report["votes"]:
            m.vote_agreement.labels(strategy).observe(decisions["agreement"])
        for decision, count in outcome.decisions.items():
            m.strategy_decisions.labels(strategy, decision).inc(count)
        m.early_stop_saved_tokens.labels(strategy).inc(report["early_stop_saved_tokens"])

    def _count_samples(self, strategy: str, counts: dict[str, int]) -> None:
        for outcome in ("finished", "aborted", "failed"):
            self.metrics.samples.labels(strategy, outcome).inc(counts[outcome])

    # -- answers ----------------------------------------------------------------------------
    @staticmethod
    def completion(result: StrategyResult, ctx: RequestContext, model: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{ctx.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message(result.outcome),
                    "finish_reason": result.outcome.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": result.usage.as_openai(),
            "ttc": result.report,
        }

    async def stream(
        self,
        spec: StrategySpec,
        params: dict[str, Any],
        budgets: Budgets,
        body: dict[str, Any],
        ctx: RequestContext,
        model: str,
    ) -> AsyncGenerator[bytes, None]:
        """Heartbeats while deciding; text the strategy accepts as soon as it does; then the
        rest of the answer, the finish chunk with the ``ttc`` report, and usage if asked."""
        base = {
            "id": f"chatcmpl-{ctx.request_id}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        sent: dict[str, list[str]] = {"reasoning_content": [], "content": []}

        def chunk(field: str, text: str) -> bytes:
            delta = {field: text}
            if not (sent["reasoning_content"] or sent["content"]):
                delta = {"role": "assistant", **delta}
            sent[field].append(text)
            return encode_event(
                {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            )

        # (field, text): thinking and answer text the strategy accepted, in order
        accepted: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        async def on_text(text: str) -> None:
            await accepted.put(("content", text))

        async def on_reasoning(text: str) -> None:
            await accepted.put(("reasoning_content", text))

        running = asyncio.create_task(
            self.run(
                spec, params, budgets, body, ctx, model, on_text=on_text, on_reasoning=on_reasoning
            )
        )
        waiter: asyncio.Future[tuple[str, str]] | None = None
        try:
            while not (running.done() and accepted.empty()):
                if not accepted.empty():
                    yield chunk(*accepted.get_nowait())
                    continue
                waiter = asyncio.ensure_future(accepted.get())
                done, _ = await asyncio.wait(
                    (running, waiter), timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED
                )
                if waiter in done:
                    yield chunk(*waiter.result())
                else:
                    waiter.cancel()
                    if not done:
                        yield encode_comment("deciding")
                waiter = None
            result = running.result()
        except Exception as exc:
            # The answer has started (200 sent): it ends with an error event, counted and
            # logged as the error it is.
            error = exc if isinstance(exc, GatewayError) else None
            if error is None:
                log.error("strategy %s failed mid-stream", spec.name, exc_info=exc)
                error = InternalError()
            else:
                log.warning(
                    "stream %s (%s) ended with an error: %s", ctx.request_id, spec.name, exc
                )
            ctx.failure = error
            yield encode_event(error.body())
            yield encode_done()
            return
        finally:
            if waiter is not None:
                waiter.cancel()
            if not running.done():
                running.cancel()
                # to its end (its samples closed and counted) even if this generator is
                # cancelled meanwhile: the request is settled right after
                with contextlib.suppress(asyncio.CancelledError):
                    await finish_even_if_cancelled(asyncio.wait({running}))
        outcome = result.outcome
        for field, text in (("reasoning_content", outcome.reasoning), ("content", outcome.content)):
            already = "".join(sent[field])
            rest = text[len(already) :] if text.startswith(already) else text
            if rest or (field == "content" and not sent["content"]):
                yield chunk(field, rest)
        yield encode_event(
            {
                **base,
                "choices": [
                    {"index": 0, "delta": {}, "finish_reason": result.outcome.finish_reason}
                ],
                "ttc": result.report,
            }
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            yield encode_event({**base, "choices": [], "usage": result.usage.as_openai()})
        yield encode_done()
