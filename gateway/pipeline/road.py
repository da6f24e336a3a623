"""One road for every sampling request once it is admitted: its budgets, then its strategy,
then its answer with the ``ttc`` report and ``X-TTC-*`` headers.

Every budget is applied here, once, before anything is sent: the deadline
(``X-TTC-Deadline-Ms``) for all; the token total (``X-TTC-Max-Tokens-Total``) and the cost cap
(``X-TTC-Max-Cost-USD``, after counting the prompt with a worker's tokenizer) become the
pass-through's ``max_tokens``, and are checked on every chunk of a strategy's samples as it
is read (``BudgetGuard``). ``single`` is the pass-through: its answer is the engine's own (``n``
choices, tool calls, log-probs, ``/v1/completions``), relayed and counted by
``gateway.upstream.client``; every other strategy is run by ``StrategyRunner``.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from typing import Any

from gateway.config import ThinkingConfig
from gateway.errors import invalid_request
from gateway.metrics import GatewayMetrics
from gateway.pipeline.runner import StrategyRunner, cost_headers, worker_header
from gateway.upstream.client import RequestContext, Upstream
from gateway.upstream.pool import WorkerPool
from strategies import Budgets, StrategySpec
from strategies.single import SAMPLED_SINGLE


@dataclass
class Sampling:
    """One admitted request: what it asks for and where it runs."""

    spec: StrategySpec
    params: dict[str, Any]
    budgets: Budgets
    body: dict[str, Any]  # forwarded as it is (the gateway's own ``ttc`` field removed)
    pool: WorkerPool
    n: int
    # Where X-TTC-Thinking-Budget came from, to name it in an error (the header or ttc field)
    thinking_origin: str = "X-TTC-Thinking-Budget"

    @property
    def model(self) -> str:
        return self.pool.model

    @property
    def passthrough(self) -> bool:
        return self.spec.run is None


@dataclass
class Answer:
    """A complete answer: the body (with its ``ttc`` report) and its ``X-TTC-*`` headers."""

    body: dict[str, Any]
    headers: dict[str, str]


class Pipeline:
    """Applies a request's budgets, runs its strategy, and shapes its answer."""

    def __init__(
        self,
        upstream: Upstream,
        runner: StrategyRunner,
        metrics: GatewayMetrics,
        thinking: ThinkingConfig | None = None,
    ) -> None:
        self.upstream = upstream
        self.runner = runner
        self.metrics = metrics
        self.thinking = thinking or ThinkingConfig()

    # -- budgets ----------------------------------------------------------------------------
    async def prepare(self, sampling: Sampling, ctx: RequestContext) -> None:
        """Check what the strategy can serve and apply every budget (above)."""
        spec, budgets, body, n = sampling.spec, sampling.budgets, sampling.body, sampling.n
        if not sampling.passthrough:
            if ctx.endpoint != "chat":
                raise invalid_request(
                    f"strategy {spec.name!r} is available on /v1/chat/completions only",
                    param="X-TTC-Strategy",
                )
            if n != 1:
                raise invalid_request(
                    f"n must be 1 with strategy {spec.name!r}: it returns one answer; set the "
                    "number of samples with X-TTC-K",
                    param="n",
                )
        self._thinking_budget(sampling, ctx)
        budgets = sampling.budgets
        ctx.limit_deadline(budgets.deadline_ms)
        if sampling.passthrough and budgets.max_tokens_total is not None:
            if budgets.max_tokens_total < n:
                raise invalid_request(
                    f"X-TTC-Max-Tokens-Total={budgets.max_tokens_total} cannot give each of the "
                    f"n={n} samples one token",
                    param="X-TTC-Max-Tokens-Total",
                )
            limit_max_tokens(body, budgets.max_tokens_total // n)
        if budgets.max_cost_usd is not None:
            await self._cost_cap(sampling, ctx, budgets.max_cost_usd)

    def _thinking_budget(self, sampling: Sampling, ctx: RequestContext) -> None:
        """Resolve the thinking budget (``X-TTC-Thinking-Budget``, else ``reasoning_effort``
        by ``thinking.effort_budgets``) and the answer budget, and check the pool can take
        them. ``single`` under a budget the gateway enforces is drawn through the sampler."""
        budgets, body = sampling.budgets, sampling.body
        origin = sampling.thinking_origin
        tokens = budgets.thinking_budget
        effort = body.get("reasoning_effort")
        known = self.thinking.effort_budgets
        if effort is not None and known:  # an empty map passes the field through to engines
            if not isinstance(effort, str) or effort not in known:
                raise invalid_request(
                    f"reasoning_effort must be one of {', '.join(sorted(known))}, got {effort!r}",
                    param="reasoning_effort",
                )
            del body["reasoning_effort"]  # the gateway's budget, not the engine's own control
            if tokens is None:
                tokens, origin = known[effort], "reasoning_effort"
        if tokens is None:
            if budgets.answer_budget is not None:
                raise invalid_request(
                    "X-TTC-Answer-Budget is the answer's tokens after thinking cut at its budget: "
                    "it needs X-TTC-Thinking-Budget (or reasoning_effort)",
                    param="X-TTC-Answer-Budget",
                )
            return
        answer = budgets.answer_budget or self.thinking.answer_budget
        sampling.budgets = replace(budgets, thinking_budget=tokens, answer_budget=answer)
        reasoning = sampling.pool.config.reasoning
        if reasoning.native_budget:
            if sampling.passthrough:  # the engine's own control on the pass-through
                sampling.pool.adapter.limit_thinking(body, tokens)
                limit_max_tokens(body, tokens + answer)
            return
        for field in ("tools", "response_format"):
            if body.get(field):
                raise invalid_request(
                    f"{field} cannot be combined with a thinking budget the gateway enforces: "
                    "an answer continued after a cut is a raw completion, which carries no "
                    f"{field} (use a pool with reasoning.native_budget, or no budget)",
                    param=field,
                )
        if not sampling.pool.adapter.renders_chat:
            raise invalid_request(
                f"pool {sampling.pool.name!r} ({sampling.pool.config.engine.value}) cannot take "
                "a thinking budget: the gateway continues a cut thinking with a raw prompt "
                "rendered by the engine's chat template, which only llama.cpp and vLLM pools "
                "render (or declare reasoning.native_budget on a vLLM pool)",
                param=origin,
                code="thinking_budget_unsupported",
            )
        if sampling.passthrough:
            if ctx.endpoint != "chat" or sampling.n != 1:
                raise invalid_request(
                    f"a thinking budget on {sampling.spec.name!r} needs /v1/chat/completions and "
                    "n=1: the gateway cuts one sample's thinking and continues its answer",
                    param="n" if ctx.endpoint == "chat" else origin,
                )
            sampling.spec = SAMPLED_SINGLE

    async def _cost_cap(self, sampling: Sampling, ctx: RequestContext, max_cost_usd: float) -> None:
        """``InvalidRequest`` naming ``X-TTC-Max-Cost-USD`` when the prompt alone (counted by a
        worker's tokenizer, at the uncached input price) costs more; for the pass-through, the
        completion tokens the rest pays for become its ``max_tokens``."""
        pool, body, n = sampling.pool, sampling.body, sampling.n
        price = self.upstream.price_of(pool.model)
        prompt_tokens = await self.upstream.count_prompt(pool, ctx, body)
        ctx.counted_prompt_tokens = prompt_tokens
        prompt_usd = prompt_tokens * price.input_cost_per_token
        if prompt_usd > max_cost_usd:
            raise invalid_request(
                f"the prompt alone costs ${prompt_usd:.8g} ({prompt_tokens} tokens at "
                f"${price.input_cost_per_token:g} each), more than X-TTC-Max-Cost-USD "
                f"(${max_cost_usd:g})",
                param="X-TTC-Max-Cost-USD",
                code="cost_cap_below_prompt",
            )
        if sampling.passthrough and price.output_cost_per_token > 0:
            # floor, with a hair of slack: 0.99999... of a token's price is one token
            left = (max_cost_usd - prompt_usd) / price.output_cost_per_token
            affordable = math.floor(left + 1e-6)
            if affordable < n:
                raise invalid_request(
                    f"after the prompt (${prompt_usd:.8g}) X-TTC-Max-Cost-USD "
                    f"(${max_cost_usd:g}) pays for {affordable} generated tokens "
                    f"(${price.output_cost_per_token:g} each), fewer than one for each of the "
                    f"n={n} choices",
                    param="X-TTC-Max-Cost-USD",
                    code="cost_cap_below_prompt",
                )
            limit_max_tokens(body, affordable // n)

    # -- answers ----------------------------------------------------------------------------
    async def answer(self, sampling: Sampling, ctx: RequestContext) -> Answer:
        """The whole answer at once."""
        headers = {"X-TTC-Strategy": sampling.spec.name}
        if not sampling.passthrough:
            result = await self.runner.run(
                sampling.spec, sampling.params, sampling.budgets, sampling.body, ctx, sampling.model
            )
            return Answer(self.runner.completion(result, ctx, sampling.model), result.headers())
        body = await self.upstream.complete(sampling.pool, ctx, sampling.body, sampling.n)
        headers.update(worker_header(ctx))
        body["ttc"] = {"strategy": sampling.spec.name, "worker": ", ".join(ctx.workers)}
        if ctx.meter is not None and self.upstream.meter is not None:
            body["ttc"].update(await self.upstream.meter.report(ctx.meter))
            headers.update(cost_headers(body["ttc"]))
        self.metrics.overhead.labels(sampling.spec.name).observe(
            time.perf_counter() - ctx.arrived - ctx.upstream_s
        )
        return Answer(body, headers)

    async def stream(self, sampling: Sampling, ctx: RequestContext) -> AsyncGenerator[bytes, None]:
        """The answer as server-sent events (``primed``: started, its cleanup always runs)."""
        if sampling.passthrough:
            return await self.upstream.stream(sampling.pool, ctx, sampling.body)
        return self.runner.stream(
            sampling.spec, sampling.params, sampling.budgets, sampling.body, ctx, sampling.model
        )


def limit_max_tokens(body: dict[str, Any], share: int) -> None:
    """Lower the body's ``max_tokens`` (or ``max_completion_tokens``) to ``share``."""
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    body[field] = min(body.get(field) or share, share)
