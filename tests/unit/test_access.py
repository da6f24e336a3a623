"""``AccessControl``: what a client is told when a key, a limit or the store says no."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.access import control as access_control
from gateway.access.control import AccessControl, PriceCeiling, redacted_url
from gateway.access.stores import (
    AdmitResult,
    KeyLimits,
    KeyRecord,
    MemoryKeyStore,
    Reservation,
    StateUnavailable,
    hash_secret,
    to_nusd,
)
from gateway.config import AuthConfig, SharedStateConfig
from gateway.errors import GatewayError
from gateway.http.errors import headers_of, status_of
from gateway.metering.meter import ModelPrice, PriceBook
from gateway.metrics import GatewayMetrics
from gateway.openai.requests import prompt_token_bound
from strategies import get_strategy
from strategies.base import TokenBound

PRICES = PriceCeiling(input_usd=1e-6, output_usd=2e-6)
BOUND = TokenBound(prompt_tokens=100, completion_tokens=400)  # $0.0009 at PRICES


def worst() -> TokenBound:
    return BOUND


async def control(
    mode: str = "auto", on_failure: str = "open", **limits: Any
) -> tuple[AccessControl, MemoryKeyStore, str]:
    store = MemoryKeyStore()
    secret = "ttc-secret"
    if limits.pop("no_key", False) is False:
        await store.add(
            KeyRecord(
                id="k1",
                name="test",
                key_hash=hash_secret(secret),
                created=time.time(),
                limits=KeyLimits(**limits),
            )
        )
    access = AccessControl(
        AuthConfig(mode=mode),  # type: ignore[arg-type]
        SharedStateConfig(on_failure=on_failure),  # type: ignore[arg-type]
        store,
        GatewayMetrics(),
        PRICES,
    )
    return access, store, secret


async def refusal(access: AccessControl, authorization: str | None, **kw: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await access.admit(authorization, kw.get("strategy", "single"), kw.get("k", 1), worst)
    return caught.value


async def test_without_any_key_the_gateway_is_open_and_reserves_nothing() -> None:
    access, _, _ = await control(no_key=True)
    admission = await access.admit(None, "single", 1, worst)
    assert admission.key_id is None and admission.reservation is None


async def test_once_a_key_exists_requests_need_it() -> None:
    access, _, secret = await control()
    missing = await refusal(access, None)
    assert (status_of(missing), missing.code) == (401, "missing_api_key")
    wrong = await refusal(access, "Bearer ttc-wrong")
    assert (status_of(wrong), wrong.code) == (401, "invalid_api_key")
    assert status_of(await refusal(access, f"Basic {secret}")) == 401
    admission = await access.admit(f"Bearer {secret}", "single", 1, worst)
    assert admission.key_id == "k1"


async def test_a_key_created_within_the_memo_second_is_checked_and_charged() -> None:
    access, store, _ = await control(no_key=True)
    assert (await access.admit(None, "single", 1, worst)).reservation is None  # open: no key
    await store.add(KeyRecord("k1", "test", hash_secret("ttc-new"), time.time()))
    # the memo of "no key exists" is a second old at most: a request presenting a key asks
    # the store again, is checked, and reserves (was let through open, its spend unbilled)
    admission = await access.admit("Bearer ttc-new", "single", 1, worst)
    assert admission.key_id == "k1" and admission.reservation is not None
    wrong = await refusal(access, "Bearer ttc-wrong")
    assert (status_of(wrong), wrong.code) == (401, "invalid_api_key")


async def test_mode_on_requires_a_key_even_before_one_exists_and_off_never() -> None:
    on, _, _ = await control(mode="on", no_key=True)
    assert status_of(await refusal(on, None)) == 401
    off, _, _ = await control(mode="off")
    assert (await off.admit(None, "single", 1, worst)).key_id is None


async def test_policy_refusals_name_the_header_and_are_not_retryable_429s() -> None:
    access, _, secret = await control(max_k=4, strategies=("single", "majority_vote"))
    too_many = await refusal(access, f"Bearer {secret}", strategy="majority_vote", k=8)
    assert (status_of(too_many), too_many.param, too_many.code) == (403, "X-TTC-K", "k_not_allowed")
    assert "max_k=4" in too_many.message
    other = await refusal(access, f"Bearer {secret}", strategy="best_of_n")
    assert (status_of(other), other.param) == (403, "X-TTC-Strategy")
    assert "single, majority_vote" in other.message


async def test_rate_limits_answer_429_with_retry_after_and_openai_headers() -> None:
    access, _, secret = await control(requests_per_minute=1)
    await access.admit(f"Bearer {secret}", "single", 1, worst)
    limited = await refusal(access, f"Bearer {secret}")
    assert (status_of(limited), limited.type, limited.code) == (
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
    )
    assert 1 <= int(headers_of(limited)["Retry-After"]) <= 60
    assert headers_of(limited)["x-ratelimit-limit-requests"] == "1"


async def test_a_request_bigger_than_the_token_limit_is_a_400_naming_max_tokens() -> None:
    access, _, secret = await control(tokens_per_minute=499)
    error = await refusal(access, f"Bearer {secret}")
    assert (status_of(error), error.param) == (400, "max_tokens")
    assert "up to 500 tokens" in error.message


async def test_budget_reserves_the_priced_worst_case_and_settles_to_the_real_cost() -> None:
    access, store, secret = await control(budget_usd=0.001)  # one request of $0.0009 fits
    first = await access.admit(f"Bearer {secret}", "single", 1, worst)
    exhausted = await refusal(access, f"Bearer {secret}")
    assert (status_of(exhausted), exhausted.code) == (429, "insufficient_quota")
    assert headers_of(exhausted)["x-should-retry"] == "false"  # the SDK must not retry it
    assert "$0.000900 spent or reserved" in exhausted.message
    await first.settle(tokens=120, cost_usd=0.0001)
    await first.settle(tokens=120, cost_usd=0.0001)  # once only
    (_, usage), *_ = await store.records()
    assert usage.spent_usd == pytest.approx(0.0001) and usage.reserved_usd == 0
    # $0.0001 spent + $0.0009 reserved fills the budget exactly: admitted, and then no more
    await access.admit(f"Bearer {secret}", "single", 1, worst)
    assert (await refusal(access, f"Bearer {secret}")).code == "insufficient_quota"


class FlakyStore(MemoryKeyStore):
    """A memory store that can be switched off, like a Redis that went away."""

    down = False

    async def admit(self, *args: Any, **kw: Any) -> AdmitResult:
        if self.down:
            raise StateUnavailable("ConnectionError: refused")
        return await super().admit(*args, **kw)

    async def settle(self, reservation: Reservation, tokens: int, nusd: int) -> None:
        if self.down:
            raise StateUnavailable("ConnectionError: refused")
        await super().settle(reservation, tokens, nusd)

    async def has_keys(self) -> bool:
        if self.down:
            raise StateUnavailable("ConnectionError: refused")
        return await super().has_keys()


async def flaky(on_failure: str) -> tuple[AccessControl, FlakyStore, GatewayMetrics]:
    store, metrics = FlakyStore(), GatewayMetrics()
    await store.add(KeyRecord("k1", "test", hash_secret("ttc-known"), time.time()))
    await store.add(KeyRecord("k2", "test", hash_secret("ttc-unseen"), time.time()))
    access = AccessControl(
        AuthConfig(),
        SharedStateConfig(on_failure=on_failure),  # type: ignore[arg-type]
        store,
        metrics,
        PRICES,
    )
    return access, store, metrics


async def test_open_policy_serves_keys_seen_before_and_books_their_spend_when_back() -> None:
    access, store, metrics = await flaky("open")
    await access.admit("Bearer ttc-known", "single", 1, worst)
    store.down = True
    access._has_keys = None  # the one-second memo of "keys exist" has expired
    during = await access.admit("Bearer ttc-known", "single", 1, worst)
    assert during.key_id == "k1"
    unseen = await refusal(access, "Bearer ttc-unseen")
    assert (status_of(unseen), unseen.code) == (503, "shared_state_unavailable")
    assert headers_of(unseen)["Retry-After"] == "1"
    await during.settle(tokens=10, cost_usd=0.5)  # kept, not lost
    assert metrics.shared_state_up.labels("memory")._value.get() == 0
    store.down = False
    await access.admit("Bearer ttc-unseen", "single", 1, worst)  # replays the settlement
    usage = {r.id: u for r, u in await store.records()}
    assert usage["k1"].spent_usd == pytest.approx(0.5)
    assert metrics.shared_state_up.labels("memory")._value.get() == 1


async def test_closed_policy_refuses_everything_with_503_while_the_store_is_down() -> None:
    access, store, _ = await flaky("closed")
    await access.admit("Bearer ttc-known", "single", 1, worst)
    store.down = True
    access._has_keys = None
    error = await refusal(access, "Bearer ttc-known")
    assert (status_of(error), error.code) == (503, "shared_state_unavailable")


def test_the_prompt_bound_counts_bytes_and_template_tokens() -> None:
    body = {"messages": [{"role": "user", "content": "héllo"}]}  # 6 bytes
    assert prompt_token_bound(body) == 6 + 8 + 64  # + a template's default system prompt
    assert prompt_token_bound({"prompt": ["ab", "cd"]}) == 4 + 8


def test_the_price_ceiling_is_the_dearest_configured_model() -> None:
    book = PriceBook(
        models={
            "a": ModelPrice(input_cost_per_token=1e-6, output_cost_per_token=1e-5),
            "b": ModelPrice(input_cost_per_token=3e-6, output_cost_per_token=2e-6),
            "unused": ModelPrice(input_cost_per_token=1.0, output_cost_per_token=1.0),
        }
    )
    ceiling = PriceCeiling.of(book, ["a", "b", "unpriced"])
    assert (ceiling.input_usd, ceiling.output_usd) == (3e-6, 1e-5)


@pytest.mark.parametrize(
    ("strategy", "params", "prompt", "completion"),
    [
        ("single", {}, 2 * 100, 2 * 50),  # n=2
        ("majority_vote", {"k": 8}, 800, 400),
        ("best_of_n", {"k": 2}, None, 2 * 50 + 2),  # judge calls: one token each
        ("cascade", {"k": 3, "escalate_to": "majority_vote", "large_k": 4}, 700, 350),
    ],
)
def test_each_strategy_bounds_its_worst_case(
    strategy: str, params: dict[str, Any], prompt: int | None, completion: int
) -> None:
    spec = get_strategy(strategy)
    bound = spec.bound(spec.parse(params), 100, 50, n=2)
    assert bound.completion_tokens == completion
    if prompt is not None:
        assert bound.prompt_tokens == prompt
    else:
        assert bound.prompt_tokens > 2 * 100 + 2 * (100 + 50)  # samples + judge prompts


def test_a_redis_url_is_logged_without_its_password() -> None:
    assert redacted_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redacted_url("rediss://app:s3cret@r.example:6380") == "rediss://app:***@r.example:6380"
    assert redacted_url("redis://redis:6379/0") == "redis://redis:6379/0"


class SlowStore(FlakyStore):
    """Each settlement takes a turn of the event loop, as a network round trip does."""

    def __init__(self) -> None:
        super().__init__()
        self.settled: list[int] = []

    async def settle(self, reservation: Reservation, tokens: int, nusd: int) -> None:
        await asyncio.sleep(0)
        await super().settle(reservation, tokens, nusd)
        self.settled.append(nusd)


async def test_settlements_kept_while_down_are_replayed_once_each_by_concurrent_requests() -> None:
    store, metrics = SlowStore(), GatewayMetrics()
    await store.add(KeyRecord("k1", "test", hash_secret("ttc-known"), time.time()))
    access = AccessControl(AuthConfig(), SharedStateConfig(), store, metrics, PRICES)
    admissions = [await access.admit("Bearer ttc-known", "single", 1, worst) for _ in range(3)]
    store.down = True
    for i, admission in enumerate(admissions):
        await admission.settle(tokens=1, cost_usd=0.1 * (i + 1))  # kept while down
    assert len(access._pending) == 3
    store.down = False
    await asyncio.gather(*(access.admit("Bearer ttc-known", "single", 1, worst) for _ in range(2)))
    # in order, each once (two replays at a time settled the first twice and dropped the next)
    assert store.settled == [to_nusd(0.1), to_nusd(0.2), to_nusd(0.3)]
    assert not access._pending


async def test_settlements_kept_while_down_are_replayed_without_waiting_for_traffic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(access_control, "REPLAY_INTERVAL_S", 0.01)
    access, store, metrics = await flaky("open")
    admission = await access.admit("Bearer ttc-known", "single", 1, worst)
    await access.start()
    try:
        store.down = True
        await admission.settle(tokens=10, cost_usd=0.5)
        assert metrics.shared_state_pending.labels("memory")._value.get() == 1
        store.down = False
        for _ in range(200):  # no request comes: the gateway replays on its own
            if not access._pending:
                break
            await asyncio.sleep(0.01)
        usage = {r.id: u for r, u in await store.records()}
        assert usage["k1"].spent_usd == pytest.approx(0.5)
        assert metrics.shared_state_pending.labels("memory")._value.get() == 0
        assert metrics.shared_state_up.labels("memory")._value.get() == 1
    finally:
        await access.close()
