"""Test-time-compute strategies, one module each, found by name through ``REGISTRY``.

The HTTP layer never imports a concrete strategy: it asks ``get_strategy(name)``. Strategies
never import the HTTP layer.
"""

from __future__ import annotations

from strategies import (
    adaptive_consistency,
    best_of_n,
    cascade,
    deepconf,
    first_finish,
    glimp_router,
    majority_vote,
    short_m_at_k,
    spec_reason,
    speculative_thinking,
)
from strategies.base import (
    Budgets,
    InvalidParameter,
    ParameterSpec,
    StrategyOutcome,
    StrategySpec,
    StrategyTask,
    UnknownStrategy,
    split_budgets,
)
from strategies.single import SINGLE

REGISTRY: dict[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        SINGLE,
        majority_vote.SPEC,
        first_finish.SPEC,
        short_m_at_k.SPEC,
        best_of_n.SPEC,
        cascade.SPEC,
        spec_reason.SPEC,
        adaptive_consistency.SPEC,
        deepconf.SPEC,
        glimp_router.SPEC,
        speculative_thinking.SPEC,
    )
}


def get_strategy(name: str) -> StrategySpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownStrategy(name, sorted(REGISTRY)) from None


__all__ = [
    "REGISTRY",
    "Budgets",
    "InvalidParameter",
    "ParameterSpec",
    "StrategyOutcome",
    "StrategySpec",
    "StrategyTask",
    "UnknownStrategy",
    "get_strategy",
    "split_budgets",
]
