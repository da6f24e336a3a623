"""A scripted ``Sampler`` for strategy unit tests: no HTTP, no engine, a virtual clock.

Sample i emits one word-token every ``delay`` time units, so the finish order is fully
determined; each role (and the judge) plays its own script. With ``draw=True`` each ``start``
takes the next k scripts of its role (strategies that sample in waves), else the first k.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from strategies.sampling import (
    BudgetExhausted,
    BudgetName,
    RoleName,
    SampleDelta,
    SampleRequest,
)


@dataclass
class Scripted:
    text: str
    delay: float = 1.0  # virtual time per token
    finish: str = "stop"
    logprobs: list[float] | None = None  # per token (cycled); default -0.1
    top: dict[str, float] | None = None  # the first token's top alternatives
    tops: list[dict[str, float]] | None = None  # every token's top alternatives (cycled)


@dataclass
class ScriptedBatch:
    k: int
    script: list[Scripted]
    budget: list[int] | None = None  # shared [tokens left] across batches
    budget_reason: BudgetName = "tokens"  # which budget the token count stands for
    cancelled: set[int] = field(default_factory=set)
    emitted: int = 0
    tokens: list[int] = field(default_factory=list)  # emitted per sample (what is billed)

    def __post_init__(self) -> None:
        self.tokens = [0] * self.k

    async def events(self) -> AsyncGenerator[SampleDelta, None]:
        queue: list[tuple[float, int, int]] = []
        tokens = [s.text.split(" ") for s in self.script]
        for i in range(self.k):
            heapq.heappush(queue, (self.script[i].delay, i, 0))
        while queue:
            at, i, n = heapq.heappop(queue)
            if i in self.cancelled:
                continue
            script = self.script[i]
            last = n == len(tokens[i]) - 1
            piece = tokens[i][n] + ("" if last else " ")
            pattern = script.logprobs or [-0.1]
            top: tuple[dict[str, float], ...] = ()
            if script.tops is not None:
                top = (script.tops[n % len(script.tops)],)
            elif n == 0 and script.top is not None:
                top = (script.top,)
            self.emitted += 1
            self.tokens[i] += 1
            yield SampleDelta(
                i,
                piece,
                1,
                logprobs=(pattern[n % len(pattern)],),
                top_logprobs=top,
                finish_reason=script.finish if last else None,
            )
            if self.budget is not None:
                self.budget[0] -= 1
                if self.budget[0] <= 0:
                    self.cancelled |= set(range(self.k))
                    raise BudgetExhausted(self.budget_reason)
            if not last:
                heapq.heappush(queue, (at + script.delay, i, n + 1))

    async def cancel(self, samples: Iterable[int] | None = None) -> None:
        self.cancelled |= set(range(self.k)) if samples is None else set(samples)


@dataclass
class Call:
    role: RoleName | None
    k: int
    request: SampleRequest


@dataclass
class RoleSampler:
    scripts: dict[RoleName | None, list[Scripted]]
    judge: Callable[[str], Scripted] = lambda prompt: Scripted("5")
    budget_tokens: int | None = None
    budget_reason: BudgetName = "tokens"
    draw: bool = False  # each start takes the next k scripts of its role
    calls: list[Call] = field(default_factory=list)
    batches: list[ScriptedBatch] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.budget = None if self.budget_tokens is None else [self.budget_tokens]
        self.drawn: dict[RoleName | None, int] = {}

    async def start(
        self,
        request: SampleRequest,
        k: int,
        role: RoleName | None = None,
    ) -> ScriptedBatch:
        self.calls.append(Call(role, k, request))
        if role == "judge":
            assert k == 1 and request.messages is not None
            script = [self.judge(request.messages[-1]["content"])]
        elif self.draw:
            first = self.drawn.get(role, 0)
            script = self.scripts[role][first : first + k]
            assert len(script) == k, f"the script has no samples {first}..{first + k - 1}"
            self.drawn[role] = first + k
        else:
            script = self.scripts[role][:k]
        batch = ScriptedBatch(k, script, self.budget, self.budget_reason)
        self.batches.append(batch)
        return batch

    async def render_chat(
        self, messages: list[dict[str, Any]], role: RoleName | None = None
    ) -> str:
        raise NotImplementedError("these scripted strategies do not render prompts")

    def roles(self) -> list[tuple[RoleName | None, int]]:
        return [(c.role, c.k) for c in self.calls]
