"""A scripted ``Sampler`` for step-level strategies: the calls a strategy must make, in order.

Each ``start`` takes the next ``(role, Reply)`` of the script and fails the test if the
strategy asked another role; every call is recorded (role, prompt, params, sticky key, thinking
budget) so a test can pin the prompts and parameters. Chats render as ``[role:pool]`` tags,
followed by ``opener`` (a template that opens the thinking itself).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any

from strategies import StrategyOutcome, StrategySpec, StrategyTask
from strategies.sampling import (
    BudgetExhausted,
    RoleName,
    SampleDelta,
    SampleRequest,
    ThinkingBudget,
)


@dataclass
class Reply:
    text: str
    finish: str = "stop"
    eos: bool | None = False  # False: the "\n\n" stop string matched (or none was asked)
    top: dict[str, float] | None = None  # the first token's top alternatives
    count: int | None = None  # tokens; default one per word

    @property
    def tokens(self) -> int:
        return len(self.text.split()) if self.count is None else self.count


@dataclass
class Sent:
    role: str
    prompt: str
    params: dict[str, Any]
    sticky_key: str | None
    thinking: ThinkingBudget | None


@dataclass
class OneShot:
    """A one-sample batch that plays a reply in one delta."""

    reply: Reply
    budget: list[int] | None
    k: int = 1
    cancelled: bool = False

    async def events(self) -> AsyncGenerator[SampleDelta, None]:
        r = self.reply
        if self.budget is not None:
            self.budget[0] -= r.tokens
            if self.budget[0] < 0:
                raise BudgetExhausted("tokens")
        tops = (r.top,) if r.top is not None else ()
        yield SampleDelta(0, r.text, r.tokens, top_logprobs=tops, finish_reason=r.finish, eos=r.eos)

    async def cancel(self, samples: Iterable[int] | None = None) -> None:
        self.cancelled = True


@dataclass
class SequenceSampler:
    script: list[tuple[str, Reply]]  # (role, reply) per call, in order
    opener: str = ""
    budget_tokens: int | None = None  # the request's token total (BudgetExhausted past it)
    sent: list[Sent] = field(default_factory=list)
    renders: list[tuple[str, int]] = field(default_factory=list)
    batches: list[OneShot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._budget = [self.budget_tokens] if self.budget_tokens is not None else None

    async def render_chat(
        self, messages: list[dict[str, Any]], role: RoleName | None = None
    ) -> str:
        self.renders.append((str(role), len(messages)))
        body = "".join(f"[{m['role']}:{role}]{m['content']}" for m in messages)
        return body + f"[gen:{role}]" + self.opener

    async def start(self, request: SampleRequest, k: int, role: RoleName | None = None) -> OneShot:
        assert request.prompt is not None and k == 1
        self.sent.append(
            Sent(str(role), request.prompt, request.params, request.sticky_key, request.thinking)
        )
        assert self.script, f"unscripted call on {role}: {request.params}"
        expected, reply = self.script.pop(0)
        assert role == expected, f"call {len(self.sent)} went to {role}, not {expected}"
        batch = OneShot(reply, self._budget)
        self.batches.append(batch)
        return batch


@dataclass
class Ran:
    outcome: StrategyOutcome
    reasoning: list[str]  # the on_reasoning pieces
    text: list[str]  # the on_text pieces

    @property
    def report(self) -> dict[str, Any]:
        return self.outcome.report


async def run_steps(
    spec: StrategySpec,
    sampler: SequenceSampler,
    thinking: ThinkingBudget | None = None,
    body: dict[str, Any] | None = None,
    **params: Any,
) -> Ran:
    assert spec.run is not None
    ran = Ran(StrategyOutcome("", ""), [], [])

    async def on_reasoning(text: str) -> None:
        ran.reasoning.append(text)

    async def on_text(text: str) -> None:
        ran.text.append(text)

    task = StrategyTask(
        request=SampleRequest(
            messages=[{"role": "user", "content": "Q"}], params=body or {}, thinking=thinking
        ),
        params=spec.parse(params),
        sampler=sampler,
        decided=lambda: None,
        on_text=on_text,
        on_reasoning=on_reasoning,
    )
    ran.outcome = await spec.run(task)
    assert not sampler.script, f"calls left unmade: {sampler.script}"
    assert all(b.cancelled for b in sampler.batches)  # every worker slot was given back
    assert all(s.thinking is None for s in sampler.sent)  # no call is cut by the sampler
    return ran
