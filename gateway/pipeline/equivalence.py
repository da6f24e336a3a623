"""Which answers vote together: the gateway's ``SameAnswer`` for ``answers.equivalence``.

- ``exact``: normalised answer keys must be equal (``strategies.answers.answer_key``).
- ``numeric`` (default): also numbers equal within ``rel_tol=1e-4`` and numeric fractions
  (``\\frac{1}{2}`` = ``0.5``), the Qwen ``math_equal`` rule; pure Python, on the event loop.
- ``symbolic``: also math-verify's symbolic equivalence (``x+1`` = ``1+x``,
  ``\\sqrt{2}/2`` = ``\\frac{\\sqrt{2}}{2}``), for pairs the numeric rule cannot decide.

math-verify runs sympy, which can take seconds or never return on a hostile answer, and its own
timeouts need a main thread. So the check runs in a pool of worker processes (pebble's
``ProcessPool``) that kills a check past ``answers.symbolic_timeout_s`` and starts a fresh
worker; the wait in the queue counts against the same timeout. A check that times out or fails
counts as "different": the answers keep separate buckets, exactly as without math-verify.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
from collections.abc import Callable
from typing import Any

from gateway.config import AnswersConfig
from gateway.metrics import GatewayMetrics
from strategies.answers import (
    SameAnswer,
    math_verify_equivalent,
    numeric_verdict,
    numerically_same,
)

log = logging.getLogger("ttc.equivalence")


def _warm_up() -> None:
    """Import math-verify (and sympy) when a worker starts, not on its first check."""
    importlib.import_module("math_verify")


class SymbolicEquivalence:
    """The numeric rule, then, where it cannot tell, math-verify in a worker process, with a
    timeout."""

    def __init__(
        self,
        config: AnswersConfig,
        metrics: GatewayMetrics,
        check: Callable[[str, str], bool] = math_verify_equivalent,
    ) -> None:
        from pebble import ProcessPool  # the `math` extra

        self.timeout_s = config.symbolic_timeout_s
        self.metrics = metrics
        self.check = check  # a module-level function: it is pickled by name into the worker
        self.pool: Any = ProcessPool(
            max_workers=config.symbolic_workers,
            initializer=_warm_up,
            # not fork: the gateway's threads and event loop must not be copied into a worker
            context=multiprocessing.get_context("spawn"),
        )

    async def start(self, timeout_s: float = 120.0) -> None:
        """Wait until a worker has started and imported math-verify (seconds: sympy), so that
        the first request's checks do not spend their timeout on it."""
        future = self.pool.schedule(self.check, args=("1", "1"), timeout=timeout_s)
        await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)

    async def __call__(self, a: str, b: str) -> bool:
        decided = numeric_verdict(a, b)
        if decided is not None:  # equal, or two different numbers: no worker call
            return decided
        future = self.pool.schedule(self.check, args=(a, b), timeout=self.timeout_s)
        try:
            same = bool(await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s))
        except TimeoutError:
            self.metrics.answer_checks.labels("timeout").inc()
            return False
        except Exception as exc:  # a parse error in math-verify, a broken worker
            log.debug("math-verify failed on %r vs %r: %r", a, b, exc)
            self.metrics.answer_checks.labels("error").inc()
            return False
        self.metrics.answer_checks.labels("same" if same else "different").inc()
        return same

    async def close(self) -> None:
        self.pool.stop()  # terminates the workers, a check running in one included
        await asyncio.to_thread(self.pool.join, 5)


def open_equivalence(
    config: AnswersConfig, metrics: GatewayMetrics
) -> tuple[SameAnswer | None, SymbolicEquivalence | None]:
    """The ``SameAnswer`` for ``config`` (None: exact keys), and the process pool to close at
    shutdown when there is one."""
    if config.equivalence == "exact":
        return None, None
    if config.equivalence == "numeric":
        return numerically_same, None
    symbolic = SymbolicEquivalence(config, metrics)
    return symbolic, symbolic
