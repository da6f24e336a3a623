"""The routing policies' rules (``gateway.upstream.routing``), and how a pool applies them."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from gateway.config import (
    CircuitBreakerConfig,
    HealthCheckConfig,
    PoolConfig,
    RoutingConfig,
    WorkerConfig,
)
from gateway.metrics import GatewayMetrics
from gateway.upstream.pool import Worker, WorkerPool
from gateway.upstream.routing import (
    CacheAware,
    LeastLoaded,
    PrefixIndex,
    RoundRobin,
    RouteRequest,
    Session,
    make_policy,
    prompt_text,
    rendezvous_score,
    stable_identity,
)

SYSTEM = "You are a careful assistant. " * 40  # 1,160 characters, 18 blocks of 64


def workers(count: int) -> list[Worker]:
    return [
        Worker(WorkerConfig(url=f"http://10.0.0.{i}:8000"), CircuitBreakerConfig(), f"w{i}")
        for i in range(count)
    ]


def chat(*turns: str, system: str = SYSTEM, session: str | None = None) -> RouteRequest:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    messages += [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)
    ]
    return RouteRequest({"messages": messages}, session)


def test_the_prompt_text_keeps_roles_and_order_so_a_later_turn_extends_an_earlier_one() -> None:
    first = chat("What is 2 + 2?").text
    second = chat("What is 2 + 2?", "4", "And 3 + 3?").text
    assert second.startswith(first)
    assert first == f"<system>{SYSTEM}\n<user>What is 2 + 2?\n"
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert prompt_text(parts) == "<user>hi\n"
    assert prompt_text({"prompt": "Once upon"}) == "Once upon"


def test_block_hashes_are_chained_so_equal_blocks_after_different_prefixes_differ() -> None:
    a = RouteRequest({"prompt": "a" * 64 + "b" * 64}).blocks(64)
    b = RouteRequest({"prompt": "c" * 64 + "b" * 64}).blocks(64)
    assert len(a) == len(b) == 2
    assert a[1] != b[1]  # the same second block names a different prefix
    assert RouteRequest({"prompt": "a" * 64 + "b" * 63}).blocks(64) == a[:1]  # whole blocks only


def test_cache_aware_sends_a_later_turn_to_the_worker_holding_its_prefix() -> None:
    pool = workers(2)
    policy = CacheAware(RoutingConfig())
    first, outcome = policy.choose(pool, chat("Hello"))
    assert outcome == "miss"
    other = pool[1] if first is pool[0] else pool[0]
    first.sequences, other.sequences = 3, 0  # the holder is busier, but within the thresholds
    chosen, outcome = policy.choose(pool, chat("Hello", "Hi there", "How are you?"))
    assert (chosen, outcome) == (first, "hit")


def test_a_match_at_or_below_the_threshold_is_a_miss_that_goes_to_the_least_loaded() -> None:
    pool = workers(2)
    policy = CacheAware(RoutingConfig(cache_threshold=0.5))
    policy.sent(pool[0], RouteRequest({"prompt": "x" * 640}))  # 10 blocks on w0
    pool[0].sequences = 1
    # 640 of 1,600 characters match (0.4): a miss, to the idle worker
    chosen, outcome = policy.choose(pool, RouteRequest({"prompt": "x" * 640 + "y" * 960}))
    assert (chosen, outcome) == (pool[1], "miss")
    # 640 of 1,000 match (0.64): a hit
    pool[1].sequences = 2
    chosen, outcome = policy.choose(pool, RouteRequest({"prompt": "x" * 640 + "z" * 360}))
    assert (chosen, outcome) == (pool[0], "hit")


def test_a_busy_holder_spills_to_the_idlest_only_past_both_thresholds() -> None:
    config = RoutingConfig(balance_abs_threshold=2, balance_rel_threshold=1.5)
    pool = workers(2)
    policy = CacheAware(config)
    policy.sent(pool[0], chat("hot"))
    pool[1].sequences = 2
    pool[0].sequences = 4  # 4 > 2 * 1.5 but not > 2 + 2: stays
    assert policy.choose(pool, chat("hot")) == (pool[0], "hit")
    pool[0].sequences = 5  # 5 > 2 + 2 and 5 > 3: spills, and the prefix is now on both
    assert policy.choose(pool, chat("hot")) == (pool[1], "spill")
    pool[1].sequences = 9
    pool[0].sequences = 1
    chosen, outcome = policy.choose(pool, chat("hot"))
    assert (chosen, outcome) == (pool[0], "hit")  # both hold it: the less loaded of them
    pool[0].sequences, pool[1].sequences = 5, 4  # relative 5 < 6 holds it: no spill
    assert policy.choose(pool, chat("hot"))[1] == "hit"


def test_the_index_is_bounded_and_evicts_the_least_recently_used_tails_first() -> None:
    index = PrefixIndex(max_blocks=30)
    (w,) = workers(1)
    shared = RouteRequest({"prompt": "s" * 64 * 10})
    index.insert(shared.blocks(64), w)
    for n in range(50):  # 50 prompts of 20 blocks each, the shared prefix touched every time
        prompt = RouteRequest({"prompt": "s" * 640 + f"{n:04d}" * 16 * 10})
        index.insert(prompt.blocks(64), w)
        assert len(index) <= 30
    assert index.matched(shared.blocks(64), [w]) == [10]  # the shared prefix stayed


def test_the_index_stays_within_its_memory_bound() -> None:
    index = PrefixIndex(max_blocks=20_000)
    (w,) = workers(1)
    tracemalloc.start()
    try:
        for n in range(2_000):  # 100,000 blocks offered
            index.insert(RouteRequest({"prompt": f"{n:06d}" * 534}).blocks(64), w)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == 20_000
    assert used < 20_000 * 250  # the documented ~150 bytes a block, with room


def test_a_worker_that_goes_down_is_dropped_from_the_index() -> None:
    pool = workers(2)
    policy = CacheAware(RoutingConfig())
    policy.sent(pool[0], chat("Hello"))
    blocks = chat("Hello").blocks(64)
    assert policy.index.matched(blocks, pool) == [len(blocks), 0]
    policy.forget(pool[0])
    assert policy.index.matched(blocks, pool) == [0, 0]
    assert policy.choose(pool, chat("Hello", "Hi", "More"))[1] == "miss"


def test_session_is_sticky_by_rendezvous_and_spills_in_its_own_order() -> None:
    pool = workers(3)
    policy = Session(pool)
    owners = {}
    for key in (f"user-{i}" for i in range(30)):
        ranked = sorted(pool, key=lambda w: rendezvous_score(key, stable_identity(w)), reverse=True)
        assert policy.choose(pool, chat("x", session=key)) == (ranked[0], "hit")
        # its worker full or failing: the next one in its own order, the same on every replica
        assert policy.choose(ranked[1:], chat("x", session=key)) == (ranked[1], "spill")
        owners[key] = ranked[0].name
    assert len(set(owners.values())) == 3  # sessions spread over every worker
    assert policy.choose(pool, chat("x"))[1] == "miss"  # no key: balanced


def test_rendezvous_moves_only_the_sessions_of_a_worker_that_leaves() -> None:
    pool = workers(4)
    policy = Session(pool)
    before = {k: policy.choose(pool, chat(session=k))[0] for k in map(str, range(200))}
    pool[2].retired = True
    after = {k: policy.choose(pool[:2] + pool[3:], chat(session=k))[0] for k in before}
    moved = {k for k in before if before[k] is not after[k]}
    assert moved == {k for k in before if before[k] is pool[2]}


def test_least_loaded_and_round_robin() -> None:
    pool = workers(3)
    pool[0].sequences, pool[1].sequences, pool[2].sequences = 2, 0, 0
    least = LeastLoaded()
    chosen = [least.choose(pool, chat())[0].name for _ in range(4)]
    assert set(chosen) == {"w1", "w2"} and "w0" not in chosen  # equals taken in turn
    rr = RoundRobin()
    assert [rr.choose(pool, chat())[0].name for _ in range(4)] == ["w0", "w1", "w2", "w0"]


def test_the_default_policy_is_cache_aware_only_with_several_workers() -> None:
    assert make_policy(RoutingConfig(), workers(1), several=False).name == "least_loaded"
    assert make_policy(RoutingConfig(), workers(2), several=True).name == "cache_aware"
    assert make_policy(RoutingConfig(policy="session"), workers(2), True).name == "session"


def pool_of(count: int, policy: str | None = None, **worker: Any) -> WorkerPool:
    config = PoolConfig(
        name="p",
        engine="vllm",
        model="m",
        workers=[WorkerConfig(url=f"http://10.0.0.{i}:8000", **worker) for i in range(count)],
        routing=RoutingConfig(policy=policy),  # type: ignore[arg-type]
    )
    pool = WorkerPool(config, HealthCheckConfig(), GatewayMetrics())
    for w in pool.workers:
        w.healthy = True
    return pool


def decisions(pool: WorkerPool, outcome: str) -> float:
    value = pool._metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "ttc_routing_decisions_total",
        {"pool": "p", "policy": pool.policy.name, "outcome": outcome},
    )
    return value or 0.0


def test_a_pool_routes_turns_to_the_holder_and_counts_each_decision() -> None:
    pool = pool_of(2)
    assert pool.policy.name == "cache_aware"
    first = pool.lease(route=chat("Hi"))
    first.release()
    other = pool.workers[1] if first.worker is pool.workers[0] else pool.workers[0]
    busy = pool.lease(route=chat("unrelated", system="other " * 100))  # lands on the idle one
    assert busy.worker is other
    second = pool.lease(route=chat("Hi", "Hello!", "Tell me more"))
    assert second.worker is first.worker
    assert (decisions(pool, "miss"), decisions(pool, "hit")) == (2, 1)
    gauge = pool._metrics.registry.get_sample_value("ttc_routing_index_blocks", {"pool": "p"})  # type: ignore[attr-defined]
    assert gauge == pool.policy.index_blocks() > 0
    # a call without a prompt (tokenizing) is not a routing decision
    pool.lease().release()
    assert decisions(pool, "miss") + decisions(pool, "hit") == 3


def test_k_samples_go_to_the_holder_when_it_has_room_else_split_holder_first() -> None:
    pool = pool_of(2, max_sequences=8)
    holder = pool.lease(route=chat("Solve this"))
    holder.release()
    other = pool.workers[1] if holder.worker is pool.workers[0] else pool.workers[0]
    assert pool.plan(6, chat("Solve this", "x = 2", "Again")) == [(holder.worker, 6)]
    holder.worker.sequences = 5  # 3 free: the holder's part first, the rest beside it
    parts = pool.plan(6, chat("Solve this", "x = 2", "Again"))
    assert parts == [(holder.worker, 3), (other, 3)]


def test_samples_no_worker_has_room_for_queue_in_requests_the_engine_accepts() -> None:
    """llama.cpp answers 400 to an ``n`` above its slots: k=16 on 8-slot workers that are
    full is two requests of 8, not one of 16."""
    pool = pool_of(1, max_sequences=8)
    (worker,) = pool.workers
    assert pool.plan(16, chat("Solve")) == [(worker, 8), (worker, 8)]
    worker.sequences = 5
    assert pool.plan(12, chat("Solve")) == [(worker, 3), (worker, 8), (worker, 1)]


@pytest.mark.parametrize("policy", ["least_loaded", "round_robin", "session", "cache_aware"])
def test_every_policy_skips_a_full_worker(policy: str) -> None:
    pool = pool_of(2, policy, max_in_flight=1)
    held = pool.lease(route=chat("a", session="s"))
    nxt = pool.lease(route=chat("a", session="s"))
    assert nxt.worker is not held.worker


def test_session_hashes_what_every_replica_calls_a_worker_alike() -> None:
    """A discovered worker's name (pool-<n>) depends on what that process saw before; its
    configured name or, without one, its address does not."""
    named = Worker(
        WorkerConfig(url="http://10.0.0.9:8000", name="gpu-9"), CircuitBreakerConfig(), "p-3"
    )
    found = Worker(WorkerConfig(url="http://10.0.0.7:8000"), CircuitBreakerConfig(), "p-5")
    assert (stable_identity(named), stable_identity(found)) == ("gpu-9", "http://10.0.0.7:8000")
    renamed = Worker(WorkerConfig(url="http://10.0.0.7:8000"), CircuitBreakerConfig(), "p-1")
    one, other = Session([named, found]), Session([named, renamed])
    for key in map(str, range(50)):
        assert (
            one.choose([named, found], chat(session=key))[0].url
            == other.choose([named, renamed], chat(session=key))[0].url
        )
