"""The response cache: deterministic requests only, one entry per strategy and parameters,
per API key, shared through Redis by two gateways."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.access.stores import KeyFile, KeyRecord, MemoryKeyStore, hash_secret
from gateway.config import AuthConfig, ResponseCacheConfig, SharedStateConfig
from tests.processes import RedisServer, redis_server
from tests.standin import serve_standin
from tests.standin_fixtures import chat_body, pool_for, serve_gateway

CACHE = ResponseCacheConfig(enabled=True)
DETERMINISTIC = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def redis_proc() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


async def post(gw: Any, headers: dict[str, str] | None = None, **body: Any) -> Any:
    response = await gw.client.post(
        "/v1/chat/completions", json=chat_body(**body), headers=headers or {}
    )
    assert response.status_code == 200, response.text
    return response


async def test_a_deterministic_answer_is_served_again_without_the_engine() -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url), cache=CACHE) as gw,
    ):
        first = await post(gw, **DETERMINISTIC)
        second = await post(gw, **DETERMINISTIC)
        assert "x-ttc-cache" not in first.headers
        assert second.headers["x-ttc-cache"] == "hit"
        assert second.json() == first.json()
        assert second.headers["x-ttc-cost-usd"] == first.headers["x-ttc-cost-usd"]
        assert len(standin.engine.requests) == 1


async def test_sampled_and_streamed_requests_are_never_cached() -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url), cache=CACHE) as gw,
    ):
        for _ in range(2):
            await post(gw, temperature=0.7, max_tokens=8)
            await post(gw, stream=True, **DETERMINISTIC)
        assert len(standin.engine.requests) == 4


async def test_strategies_and_their_parameters_never_share_an_entry() -> None:
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url), cache=CACHE) as gw,
    ):
        variants = [
            {},
            {"X-TTC-Strategy": "majority_vote", "X-TTC-K": "3"},
            {"X-TTC-Strategy": "majority_vote", "X-TTC-K": "4"},
            {"X-TTC-Strategy": "first_finish", "X-TTC-K": "3"},
        ]
        for headers in variants:
            assert "x-ttc-cache" not in (await post(gw, headers, **DETERMINISTIC)).headers
        for headers in variants:
            assert (await post(gw, headers, **DETERMINISTIC)).headers["x-ttc-cache"] == "hit"
        assert len(standin.engine.requests) == len(variants)  # one upstream call each


async def test_one_api_key_never_gets_another_keys_cached_answer(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    store = MemoryKeyStore(keys)
    for name in ("a", "b"):
        await store.add(KeyRecord(name, name, hash_secret(f"ttc-{name}"), time.time()))
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(
            pool_for("vllm", standin.url),
            cache=CACHE,
            auth=AuthConfig(keys_file=str(keys.path)),
        ) as gw,
    ):
        await post(gw, {"Authorization": "Bearer ttc-a"}, **DETERMINISTIC)
        other = await post(gw, {"Authorization": "Bearer ttc-b"}, **DETERMINISTIC)
        again = await post(gw, {"Authorization": "Bearer ttc-a"}, **DETERMINISTIC)
        assert "x-ttc-cache" not in other.headers and again.headers["x-ttc-cache"] == "hit"
        assert len(standin.engine.requests) == 2


async def test_replicas_share_the_cache_through_redis(redis_proc: RedisServer) -> None:
    state = SharedStateConfig(redis_url=redis_proc.url)
    async with (
        serve_standin("vllm") as standin,
        serve_gateway(pool_for("vllm", standin.url), cache=CACHE, state=state) as one,
        serve_gateway(pool_for("vllm", standin.url), cache=CACHE, state=state) as other,
    ):
        first = await post(one, content="shared?", **DETERMINISTIC)
        second = await post(other, content="shared?", **DETERMINISTIC)
        assert second.headers["x-ttc-cache"] == "hit" and second.json() == first.json()
        assert len(standin.engine.requests) == 1
