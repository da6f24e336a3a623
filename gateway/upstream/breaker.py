"""A circuit breaker per worker: stop sending to a worker that keeps failing, then probe it.

Health checks see a worker that is down; the breaker sees one that is up but failing: it answers
``/health`` and then 500s, malformed JSON or broken streams. States::

    closed ──(failures consecutive failed calls)──▶ open ──(cooldown_s)──▶ half-open
      ▲                                              ▲                        │
      └──────────────(the probe call succeeds)───────┴──(the probe fails)─────┘

Open: no request is sent. Half-open: one request at a time (the probe) is let through. A
failure is a call that ended in a connection error, a timeout, a 5xx or a broken protocol; a
success is a call that completed (a 4xx is the client's fault: neither).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class BreakerState(IntEnum):
    """Values of ``ttc_worker_circuit_state``."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures_to_open = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self.cooldown_s:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allows(self) -> bool:
        """May a request be sent now?"""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probing
        )

    def started(self) -> None:
        """A request was sent (after ``allows``); in half-open it is the probe."""
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def seconds_until_probe(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failed(self) -> bool:
        """Count a failure; True when it (re)opened the circuit."""
        state = self.state
        self._probing = False
        if state is BreakerState.OPEN:
            return False  # a call sent before the circuit opened
        if state is BreakerState.HALF_OPEN or self._failures + 1 >= self.failures_to_open:
            self._failures = 0
            self._opened_at = self._clock()
            return True
        self._failures += 1
        return False

    def released(self) -> None:
        """A request's slot was given back: a probe that ended with no verdict (the client
        went away) lets the next request probe."""
        self._probing = False
