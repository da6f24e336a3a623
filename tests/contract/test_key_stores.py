"""Both key stores, process memory and a real Redis server, keep the same contract: the same
admission verdicts, counters and settlements (``gateway.access.stores``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from gateway.access.control import AccessControl, PriceCeiling
from gateway.access.stores import (
    NANO,
    WINDOW_S,
    KeyFile,
    KeyLimits,
    KeyRecord,
    KeyStore,
    MemoryKeyStore,
    RedisKeyStore,
    Reservation,
    StateUnavailable,
    hash_secret,
    new_admission_id,
    new_secret,
)
from gateway.config import AuthConfig, SharedStateConfig
from gateway.errors import Unavailable
from gateway.metrics import GatewayMetrics
from strategies.base import TokenBound
from tests.processes import RedisServer, redis_server

# A time well inside a minute window, so a test never straddles two.
NOW = 1_800_000_000.0 - 1_800_000_000.0 % WINDOW_S + 5


@pytest.fixture(scope="module")
def redis_proc() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    if request.param == "memory":
        yield MemoryKeyStore(KeyFile(tmp_path / "keys.json"))
        return
    server: RedisServer = request.getfixturevalue("redis_proc")
    redis.Redis.from_url(server.url).flushdb()
    redis_store = RedisKeyStore(server.url)
    yield redis_store
    await redis_store.close()


async def add_key(store: KeyStore, **limits: object) -> tuple[str, KeyRecord]:
    secret = new_secret()
    record = KeyRecord(
        id=hash_secret(secret)[:8],
        name="test",
        key_hash=hash_secret(secret),
        created=time.time(),
        limits=KeyLimits(**limits),  # type: ignore[arg-type]
    )
    await store.add(record)
    return record.key_hash, record


async def test_a_key_is_found_by_the_hash_of_its_secret_and_unknown_ones_are_not(
    store: KeyStore,
) -> None:
    assert not await store.has_keys()
    key_hash, record = await add_key(store, max_k=8, strategies=("single", "majority_vote"))
    assert await store.has_keys()
    result = await store.admit(key_hash, "single", 1, 10, 0, NOW, new_admission_id())
    assert result.verdict == "ok"
    assert result.record == record  # limits round-trip through the store
    assert (
        await store.admit(hash_secret("ttc-wrong"), "single", 1, 10, 0, NOW, new_admission_id())
    ).verdict == ("unknown")
    records = await store.records()
    assert [r.id for r, _ in records] == [record.id]


async def test_revoked_max_k_and_strategy_are_refused_and_reserve_nothing(
    store: KeyStore,
) -> None:
    key_hash, record = await add_key(
        store, max_k=4, strategies=("majority_vote",), requests_per_minute=1, budget_usd=1.0
    )
    assert (
        await store.admit(key_hash, "majority_vote", 5, 10, 7, NOW, new_admission_id())
    ).verdict == "max_k"
    assert (
        await store.admit(key_hash, "best_of_n", 4, 10, 7, NOW, new_admission_id())
    ).verdict == "strategy"
    # nothing was counted: the one request of this minute is still available
    assert (
        await store.admit(key_hash, "majority_vote", 4, 10, 7, NOW, new_admission_id())
    ).verdict == "ok"
    (_, usage), *_ = await store.records()
    assert usage.reserved_usd == 7 / NANO
    await store.update(record.id, revoked=True)
    assert (
        await store.admit(key_hash, "majority_vote", 1, 10, 0, NOW + 60, new_admission_id())
    ).verdict == "revoked"


async def test_requests_per_minute_hold_within_a_window_and_reset_in_the_next(
    store: KeyStore,
) -> None:
    key_hash, _ = await add_key(store, requests_per_minute=3)
    verdicts = [
        (await store.admit(key_hash, "single", 1, 1, 0, NOW, new_admission_id())).verdict
        for _ in range(5)
    ]
    assert verdicts == ["ok", "ok", "ok", "rpm", "rpm"]
    assert (
        await store.admit(key_hash, "single", 1, 1, 0, NOW + WINDOW_S, new_admission_id())
    ).verdict == "ok"


async def test_concurrent_admissions_never_pass_the_limit(store: KeyStore) -> None:
    key_hash, _ = await add_key(store, requests_per_minute=10)
    results = await asyncio.gather(
        *(store.admit(key_hash, "single", 1, 1, 0, NOW, new_admission_id()) for _ in range(50))
    )
    assert sum(r.verdict == "ok" for r in results) == 10


async def test_tokens_per_minute_count_reservations_then_what_was_used(store: KeyStore) -> None:
    key_hash, _ = await add_key(store, tokens_per_minute=1000)
    assert (
        await store.admit(key_hash, "single", 1, 1001, 0, NOW, new_admission_id())
    ).verdict == "tpm_request"
    first = await store.admit(key_hash, "single", 1, 600, 0, NOW, new_admission_id())
    assert first.verdict == "ok" and first.reservation is not None
    assert (
        await store.admit(key_hash, "single", 1, 600, 0, NOW, new_admission_id())
    ).verdict == "tpm"
    await store.settle(first.reservation, tokens=100, nusd=0)  # it used far less
    assert (
        await store.admit(key_hash, "single", 1, 600, 0, NOW, new_admission_id())
    ).verdict == "ok"
    assert (
        await store.admit(key_hash, "single", 1, 301, 0, NOW, new_admission_id())
    ).verdict == "tpm"  # 700 used


async def test_a_budget_counts_spent_plus_reserved_and_settles_to_the_real_cost(
    store: KeyStore,
) -> None:
    key_hash, record = await add_key(store, budget_usd=1000 / NANO)
    first = await store.admit(key_hash, "single", 1, 1, 600, NOW, new_admission_id())
    assert first.verdict == "ok" and first.reservation is not None
    refused = await store.admit(key_hash, "single", 1, 1, 600, NOW, new_admission_id())
    assert refused.verdict == "budget" and refused.used_nusd == 600
    await store.settle(first.reservation, tokens=1, nusd=250)
    (_, usage), *_ = await store.records()
    assert (usage.spent_usd, usage.reserved_usd) == (250 / NANO, 0.0)
    assert (
        await store.admit(key_hash, "single", 1, 1, 750, NOW, new_admission_id())
    ).verdict == "ok"
    assert (
        await store.admit(key_hash, "single", 1, 1, 1, NOW, new_admission_id())
    ).verdict == "budget"
    await store.update(record.id, budget_usd=None)
    assert (
        await store.admit(key_hash, "single", 1, 1, 10**6, NOW, new_admission_id())
    ).verdict == "ok"


async def test_settling_after_the_window_expired_still_books_the_spend(store: KeyStore) -> None:
    key_hash, _ = await add_key(store, budget_usd=1.0, tokens_per_minute=100)
    admitted = await store.admit(key_hash, "single", 1, 50, 40, NOW, new_admission_id())
    assert admitted.reservation is not None
    await store.settle(admitted.reservation, tokens=60, nusd=30)
    (_, usage), *_ = await store.records()
    assert usage.spent_usd == 30 / NANO


async def test_a_gateway_without_redis_rereads_the_keys_file(tmp_path: Path) -> None:
    """What `ttc-gateway keys --keys-file` writes, a running gateway sees within a second."""
    path = KeyFile(tmp_path / "keys.json")
    gateway_side = MemoryKeyStore(path, reload_every_s=0)
    cli_side = MemoryKeyStore(path)
    key_hash, record = await add_key(cli_side, requests_per_minute=5)
    assert (
        await gateway_side.admit(key_hash, "single", 1, 1, 0, NOW, new_admission_id())
    ).verdict == "ok"
    await cli_side.update(record.id, revoked=True)
    assert (
        await gateway_side.admit(key_hash, "single", 1, 1, 0, NOW, new_admission_id())
    ).verdict == "revoked"
    assert oct((tmp_path / "keys.json").stat().st_mode & 0o777) == "0o600"
    assert "ttc-" not in (tmp_path / "keys.json").read_text()  # hashes only, no secret


async def test_redis_that_is_down_is_reported_as_unavailable_promptly() -> None:
    store = RedisKeyStore("redis://127.0.0.1:1/0", timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(StateUnavailable):
        await store.admit(hash_secret("ttc-x"), "single", 1, 1, 0, NOW, new_admission_id())
    assert time.monotonic() - started < 2
    await store.close()


async def test_a_settlement_repeated_is_booked_once(store: KeyStore) -> None:
    key_hash, _ = await add_key(store, budget_usd=1000 / NANO, tokens_per_minute=100)
    admitted = await store.admit(key_hash, "single", 1, 50, 600, NOW, new_admission_id())
    assert admitted.reservation is not None
    for _ in range(2):  # the second is a replay after an answer that was lost
        await store.settle(admitted.reservation, tokens=20, nusd=250)
    (_, usage), *_ = await store.records()
    assert (usage.spent_usd, usage.reserved_usd) == (250 / NANO, 0.0)
    # the minute holds the 20 tokens used, once: 80 more fit, 81 do not
    assert (await store.admit(key_hash, "single", 1, 81, 0, NOW, new_admission_id())).verdict == (
        "tpm"
    )
    assert (await store.admit(key_hash, "single", 1, 80, 0, NOW, new_admission_id())).verdict == (
        "ok"
    )


async def redis_busy(url: str, seconds: float) -> threading.Thread:
    """Redis busy for ``seconds`` (``DEBUG SLEEP`` from another connection), like one stalled
    by a slow command or a fork: a call sent meanwhile runs when it wakes, after its client
    has given up waiting for the answer."""
    thread = threading.Thread(
        target=lambda: redis.Redis.from_url(url).execute_command("DEBUG", "SLEEP", seconds)
    )
    thread.start()
    await asyncio.sleep(0.1)
    return thread


async def test_a_settlement_replayed_after_a_redis_timeout_is_not_booked_twice(
    redis_proc: RedisServer,
) -> None:
    redis.Redis.from_url(redis_proc.url).flushdb()
    store = RedisKeyStore(redis_proc.url, timeout_s=0.3)
    key_hash, _ = await add_key(store, budget_usd=1.0)
    admitted = await store.admit(key_hash, "single", 1, 50, 600, NOW, new_admission_id())
    assert admitted.reservation is not None
    busy = await redis_busy(redis_proc.url, 1.0)
    with pytest.raises(StateUnavailable):
        await store.settle(admitted.reservation, tokens=20, nusd=250)
    busy.join()
    (_, usage), *_ = await store.records()
    assert usage.spent_usd == 250 / NANO  # it ran: only its answer was lost
    await store.settle(admitted.reservation, tokens=20, nusd=250)  # what the gateway replays
    (_, usage), *_ = await store.records()
    assert (usage.spent_usd, usage.reserved_usd) == (250 / NANO, 0.0)
    await store.close()


async def redis_access(url: str, on_failure: str) -> tuple[AccessControl, RedisKeyStore, str]:
    """A gateway's access control on a fresh Redis (0.3 s timeout) with one key, budget $1."""
    redis.Redis.from_url(url).flushdb()
    store = RedisKeyStore(url, timeout_s=0.3)
    secret = new_secret()
    limits = KeyLimits(budget_usd=1.0)
    await store.add(KeyRecord("k1", "test", hash_secret(secret), time.time(), limits=limits))
    access = AccessControl(
        AuthConfig(),
        SharedStateConfig(redis_url=url, on_failure=on_failure),
        store,
        GatewayMetrics(),
        PriceCeiling(input_usd=1e-6, output_usd=2e-6),
    )
    return access, store, secret


async def test_an_admission_whose_answer_was_lost_is_released_when_its_request_settles(
    redis_proc: RedisServer,
) -> None:
    access, store, secret = await redis_access(redis_proc.url, "open")
    worst = TokenBound(prompt_tokens=100, completion_tokens=400)  # reserves $0.0009
    first = await access.admit(f"Bearer {secret}", "single", 1, lambda: worst)
    await first.settle(tokens=120, cost_usd=0.0001)  # this replica now knows the key
    busy = await redis_busy(redis_proc.url, 1.0)
    second = await access.admit(f"Bearer {secret}", "single", 1, lambda: worst)
    assert second.reservation is not None and second.reservation.nusd == 0  # let in, open
    busy.join()
    (_, usage), *_ = await store.records()
    assert usage.reserved_usd == pytest.approx(0.0009)  # Redis did reserve: the answer was lost
    await second.settle(tokens=130, cost_usd=0.0002)
    (_, usage), *_ = await store.records()
    assert (usage.spent_usd, usage.reserved_usd) == (300_000 / NANO, 0.0)
    # the minute's tokens: what the two used, their reservations (500 each) replaced
    assert window_tokens(redis_proc.url, hash_secret(secret)) == 120 + 130
    await store.close()


def window_tokens(url: str, key_hash: str) -> int:
    """The tokens counted in a key's rate windows (``ttc:{hash}:rl:<minute>``)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    windows = client.keys(f"ttc:{{{key_hash}}}:rl:*")
    return sum(int(client.hget(w, "tokens") or 0) for w in windows)


async def test_a_refused_admission_whose_answer_was_lost_is_released_when_redis_answers(
    redis_proc: RedisServer,
) -> None:
    """``on_failure: closed`` answers 503; the admission may have run in Redis all the same:
    a settlement of nothing, replayed once Redis answers, releases it."""
    access, store, secret = await redis_access(redis_proc.url, "closed")
    worst = TokenBound(prompt_tokens=100, completion_tokens=400)  # reserves $0.0009
    await access.admit(f"Bearer {secret}", "single", 1, lambda: worst)  # keys exist: memo
    (_, usage), *_ = await store.records()
    assert usage.reserved_usd == pytest.approx(0.0009)
    busy = await redis_busy(redis_proc.url, 1.0)
    with pytest.raises(Unavailable):
        await access.admit(f"Bearer {secret}", "single", 1, lambda: worst)
    busy.join()
    (_, usage), *_ = await store.records()
    assert usage.reserved_usd == pytest.approx(0.0018)  # it ran: only its answer was lost
    await access._replay()  # what the replay loop does within a second
    (_, usage), *_ = await store.records()
    assert (usage.spent_usd, usage.reserved_usd) == (0.0, pytest.approx(0.0009))  # the first's
    await store.close()


async def test_an_admission_sent_twice_is_counted_once(store: KeyStore) -> None:
    """redis-py sends a call again when its connection breaks, perhaps after Redis ran it."""
    key_hash, _ = await add_key(store, budget_usd=1000 / NANO, requests_per_minute=2)
    admission_id = new_admission_id()
    for _ in range(2):
        again = await store.admit(key_hash, "single", 1, 10, 600, NOW, admission_id)
        assert again.verdict == "ok" and again.reservation is not None
    (_, usage), *_ = await store.records()
    assert usage.reserved_usd == 600 / NANO  # once: the budget still has room for 400
    assert (await store.admit(key_hash, "single", 1, 10, 400, NOW, new_admission_id())).verdict == (
        "ok"
    )
    assert (await store.admit(key_hash, "single", 1, 10, 0, NOW, new_admission_id())).verdict == (
        "rpm"
    )  # two requests counted this minute, not three
    await store.settle(again.reservation, tokens=10, nusd=100)
    (_, usage), *_ = await store.records()
    assert (usage.spent_usd, usage.reserved_usd) == (100 / NANO, 400 / NANO)


async def test_an_admission_arriving_after_its_settlement_reserves_nothing(
    store: KeyStore,
) -> None:
    """Let in open while Redis stalled, the request settled before its delayed admission ran."""
    key_hash, _ = await add_key(store, budget_usd=1000 / NANO)
    admission_id = new_admission_id()
    window = NOW // WINDOW_S
    await store.settle(Reservation(key_hash, int(window), 0, 0, admission_id), tokens=5, nusd=100)
    late = await store.admit(key_hash, "single", 1, 10, 600, NOW, admission_id)
    assert late.verdict == "ok"
    (_, usage), *_ = await store.records()
    assert (usage.spent_usd, usage.reserved_usd) == (100 / NANO, 0.0)


async def test_a_reservation_past_its_request_deadline_is_released_when_the_budget_needs_it(
    redis_proc: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica that stops between admission and settlement leaves its reservations held;
    once their requests' deadline is past, a request the budget would refuse releases them."""
    redis.Redis.from_url(redis_proc.url).flushdb()
    store = RedisKeyStore(redis_proc.url, reservation_ttl_s=10)
    key_hash, _ = await add_key(store, budget_usd=1000 / NANO)
    orphan = await store.admit(key_hash, "single", 1, 1, 600, NOW, new_admission_id())
    assert orphan.reservation is not None  # its replica stops here: never settled
    live = await store.admit(key_hash, "single", 1, 1, 600, NOW + 9, new_admission_id())
    assert live.verdict == "budget" and live.used_nusd == 600  # still within its deadline
    later = await store.admit(key_hash, "single", 1, 1, 600, NOW + 11, new_admission_id())
    assert later.verdict == "ok" and later.reservation is not None
    assert "released $0.000001 reserved for key" in caplog.text
    (_, usage), *_ = await store.records()
    assert (usage.spent_usd, usage.reserved_usd) == (0.0, 600 / NANO)  # the later one's
    # had it settled after all (a settlement kept while Redis was down), its cost is booked
    # and nothing more is released
    await store.settle(orphan.reservation, tokens=5, nusd=100)
    (_, usage), *_ = await store.records()
    assert (usage.spent_usd, usage.reserved_usd) == (100 / NANO, 600 / NANO)
    await store.settle(later.reservation, tokens=5, nusd=200)
    (_, usage), *_ = await store.records()
    assert (usage.spent_usd, usage.reserved_usd) == (300 / NANO, 0.0)
    await store.close()
