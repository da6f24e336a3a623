from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from gateway.http.routes import select_strategy
from strategies import Budgets, InvalidParameter, UnknownStrategy, get_strategy, split_budgets
from strategies.base import ParameterSpec, StrategySpec

SPEC = StrategySpec(
    name="demo",
    summary="",
    source="",
    parameters=(
        ParameterSpec("k", int, 8, "samples", minimum=1, maximum=64),
        ParameterSpec("threshold", float, 0.5, "", minimum=0, maximum=1),
        ParameterSpec("method", str, "mean", "", choices=("mean", "quantile")),
        ParameterSpec("verbose", bool, False, ""),
    ),
)


def test_header_wins_over_body_and_body_over_default() -> None:
    headers = Headers({"x-ttc-strategy": "a", "x-ttc-k": "4", "x-ttc-max-tokens-total": "9"})
    choice = select_strategy(headers, {"strategy": "b", "k": 2, "m": 1}, "single")
    assert choice.name == "a"
    assert choice.params == {"k": "4", "m": 1, "max_tokens_total": "9"}
    assert choice.origins == {
        "k": "X-TTC-K",
        "m": "ttc.m",
        "max_tokens_total": "X-TTC-Max-Tokens-Total",
    }
    assert select_strategy(Headers({}), {"strategy": "b"}, "single").name == "b"
    assert select_strategy(Headers({}), None, "single").name == "single"


def test_budgets_are_split_from_strategy_parameters() -> None:
    budgets, rest = split_budgets({"k": "3", "deadline_ms": "250", "max_tokens_total": 90})
    assert budgets == Budgets(max_tokens_total=90, deadline_ms=250)
    assert rest == {"k": "3"}
    with pytest.raises(InvalidParameter) as caught:
        split_budgets({"max_cost_usd": "-1"})
    assert caught.value.param == "max_cost_usd"


def test_parameters_are_typed_and_defaulted() -> None:
    assert SPEC.parse({"k": "3", "verbose": "true"}) == {
        "k": 3,
        "threshold": 0.5,
        "method": "mean",
        "verbose": True,
    }


@pytest.mark.parametrize(
    ("given", "param"),
    [
        ({"k": "0"}, "k"),
        ({"k": "65"}, "k"),
        ({"k": "2.5"}, "k"),
        ({"k": 2.5}, "k"),
        ({"threshold": "x"}, "threshold"),
        ({"method": "median"}, "method"),
        ({"verbose": "maybe"}, "verbose"),
        ({"kk": 1}, "kk"),
    ],
)
def test_bad_parameter_is_named(given: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        SPEC.parse(given)
    assert caught.value.param == param


def test_registry() -> None:
    assert get_strategy("single").name == "single"
    with pytest.raises(
        UnknownStrategy,
        match="known strategies: adaptive_consistency, best_of_n, cascade, deepconf, first_finish",
    ):
        get_strategy("nope")
