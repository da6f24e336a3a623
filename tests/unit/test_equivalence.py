"""``answers.equivalence``: the gateway's math-verify check in killable worker processes
(gateway/pipeline/equivalence.py), with the real math-verify."""

from __future__ import annotations

import importlib.util
import time

import pytest

from gateway.config import AnswersConfig, GatewaySettings
from gateway.metrics import GatewayMetrics
from gateway.pipeline.equivalence import SymbolicEquivalence, open_equivalence
from strategies.answers import numerically_same


def hang_forever(a: str, b: str) -> bool:
    """A check that never returns (sympy on a hostile answer); runs in the worker process."""
    if a == b or a.startswith("ok"):  # the warm-up check, and checks that answer
        return True
    time.sleep(3600)
    return True


def _count(metrics: GatewayMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "ttc_answer_equivalence_checks_total", {"result": result}
    )
    return value or 0.0


async def test_symbolic_merges_what_math_verify_proves_and_skips_it_for_numbers() -> None:
    metrics = GatewayMetrics()
    checker = SymbolicEquivalence(AnswersConfig(equivalence="symbolic"), metrics)
    try:
        await checker.start()
        assert await checker("x+1", "1+x")
        assert await checker("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}")
        assert not await checker("x+1", "x+2")
        assert _count(metrics, "same") == 2 and _count(metrics, "different") == 1
        # numbers are decided by the numeric rule alone: no worker call
        assert await checker("\\frac{1}{2}", "0.5")
        assert not await checker("2", "3")
        assert _count(metrics, "same") == 2 and _count(metrics, "different") == 1
    finally:
        await checker.close()


async def test_a_check_that_hangs_is_killed_at_the_timeout_and_counts_as_different() -> None:
    metrics = GatewayMetrics()
    config = AnswersConfig(equivalence="symbolic", symbolic_timeout_s=0.5)
    checker = SymbolicEquivalence(config, metrics, check=hang_forever)
    try:
        await checker.start()
        started = time.monotonic()
        assert not await checker("x", "y")
        assert time.monotonic() - started < 1.5
        assert _count(metrics, "timeout") == 1
        # the hung worker was killed and replaced: the next check is answered again
        await checker.start(timeout_s=30)
        assert await checker("ok x", "ok y")
        assert _count(metrics, "same") == 1
    finally:
        await checker.close()


async def test_open_equivalence_follows_the_config() -> None:
    metrics = GatewayMetrics()
    assert open_equivalence(AnswersConfig(equivalence="exact"), metrics) == (None, None)
    assert open_equivalence(AnswersConfig(), metrics) == (numerically_same, None)


def test_symbolic_without_the_math_extra_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pebble" else real(name, *a)
    )
    with pytest.raises(ValueError, match=r"needs pebble: pip install 'ttc-gateway\[math\]'"):
        GatewaySettings(answers={"equivalence": "symbolic"})
