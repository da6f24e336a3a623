"""The per-worker circuit breaker's states, on a clock the test moves."""

from __future__ import annotations

from gateway.upstream.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, cooldown_s: float = 10) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(failures, cooldown_s, clock), clock


def test_it_opens_after_consecutive_failures_only() -> None:
    b, _ = breaker(failures=3)
    assert not b.failed() and not b.failed()
    b.succeeded()  # a success in between starts the count again
    assert not b.failed() and not b.failed()
    assert b.state is BreakerState.CLOSED and b.allows()
    assert b.failed()  # the third in a row
    assert b.state is BreakerState.OPEN and not b.allows()


def test_after_the_cooldown_one_probe_at_a_time_goes_through() -> None:
    b, clock = breaker(failures=1, cooldown_s=10)
    b.failed()
    clock.now += 9.9
    assert not b.allows() and 0 < b.seconds_until_probe() <= 0.1 + 1e-9
    clock.now += 0.1
    assert b.state is BreakerState.HALF_OPEN and b.allows()
    b.started()
    assert not b.allows()  # the probe is in flight
    b.succeeded()
    assert b.state is BreakerState.CLOSED and b.allows()


def test_a_failed_probe_opens_it_again_for_a_full_cooldown() -> None:
    b, clock = breaker(failures=1, cooldown_s=10)
    b.failed()
    clock.now += 10
    b.started()
    assert b.failed()
    assert b.state is BreakerState.OPEN and b.seconds_until_probe() == 10


def test_a_probe_that_ended_without_a_verdict_lets_the_next_request_probe() -> None:
    b, clock = breaker(failures=1, cooldown_s=10)
    b.failed()
    clock.now += 10
    b.started()
    b.released()  # e.g. the client went away
    assert b.allows()


def test_failures_of_calls_sent_before_it_opened_do_not_extend_the_cooldown() -> None:
    b, clock = breaker(failures=1, cooldown_s=10)
    b.failed()
    clock.now += 5
    assert not b.failed()
    assert b.seconds_until_probe() == 5
