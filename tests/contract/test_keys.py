"""API keys through the gateway with a keys file (one replica, no Redis): every way a request
ends settles its reservation, and a settled budget equals the metered price-table cost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.access.stores import KeyFile, KeyLimits, KeyRecord, MemoryKeyStore, hash_secret
from gateway.config import AuthConfig, MeteringConfig
from tests.standin import Script, serve_standin
from tests.standin_fixtures import (
    PUBLIC_MODEL,
    RunningGateway,
    chat_body,
    pool_for,
    serve_gateway,
    sse_events,
)

SECRET = "ttc-contract-test-secret"
IN, OUT = 1e-6, 2e-6


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[RunningGateway, KeyFile, object]]:
    keys = KeyFile(tmp_path / "keys.json")
    await MemoryKeyStore(keys).add(
        KeyRecord("k1", "test", hash_secret(SECRET), time.time(), limits=KeyLimits(budget_usd=1))
    )
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        f"models:\n  {PUBLIC_MODEL}:\n    input_cost_per_token: {IN}\n"
        f"    output_cost_per_token: {OUT}\n"
    )
    script = Script.text("one two three four five six seven eight", token_delay_s=0.05)
    async with (
        serve_standin("vllm", script) as standin,
        serve_gateway(
            pool_for("vllm", standin.url),
            auth=AuthConfig(keys_file=str(keys.path)),
            metering=MeteringConfig(prices_file=str(prices)),
        ) as gw,
    ):
        yield gw, keys, standin


def authorized(**headers: str) -> dict[str, object]:
    return {"headers": {"Authorization": f"Bearer {SECRET}", **headers}}


async def spent(gw: RunningGateway) -> tuple[float, float]:
    """The gateway's own view (its store) of the key: spent and reserved USD."""
    access = gw.app.state.gateway.access
    (_, usage), *_ = await access.store.records()
    return usage.spent_usd, usage.reserved_usd


async def test_no_key_is_401_and_the_worker_never_sees_the_request(keyed: tuple) -> None:
    gw, _, standin = keyed
    response = await gw.client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    assert standin.engine.requests == []


async def test_a_stream_settles_to_the_cost_of_its_usage_when_it_ends(keyed: tuple) -> None:
    gw, _, _ = keyed
    body = chat_body(stream=True, stream_options={"include_usage": True}, max_tokens=50)
    response = await gw.client.post("/v1/chat/completions", json=body, **authorized())
    usage = next(e["usage"] for e in sse_events(response.text)[:-1] if e.get("usage"))
    cost = usage["prompt_tokens"] * IN + usage["completion_tokens"] * OUT
    assert await spent(gw) == (pytest.approx(cost), 0.0)


async def test_a_client_that_leaves_mid_stream_still_settles(keyed: tuple) -> None:
    gw, _, _ = keyed
    body = chat_body(stream=True, max_tokens=50)
    async with (
        httpx.AsyncClient(base_url=gw.url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=body, **authorized()) as response,
    ):
        async for _ in response.aiter_lines():
            break  # the first chunk, then go away
    for _ in range(100):  # the gateway notices the disconnect and aborts upstream
        spent_usd, reserved = await spent(gw)
        if reserved == 0:
            break
        await asyncio.sleep(0.02)
    assert reserved == 0 and 0 < spent_usd < 50 * OUT + 100 * IN


async def test_a_strategy_settles_every_sample(keyed: tuple) -> None:
    gw, _, _ = keyed
    response = await gw.client.post(
        "/v1/chat/completions",
        json=chat_body(max_tokens=20),
        **authorized(**{"X-TTC-Strategy": "majority_vote", "X-TTC-K": "3"}),
    )
    assert response.status_code == 200
    ttc = response.json()["ttc"]
    assert await spent(gw) == (pytest.approx(ttc["cost"]["price_table_usd"]), 0.0)


async def test_a_failed_upstream_call_releases_the_reservation(keyed: tuple) -> None:
    gw, _, standin = keyed
    standin.engine.script = Script(status=500)
    response = await gw.client.post("/v1/chat/completions", json=chat_body(), **authorized())
    assert response.status_code == 502
    assert await spent(gw) == (0.0, 0.0)


async def test_revoking_in_the_file_reaches_the_running_gateway(keyed: tuple) -> None:
    gw, keys, _ = keyed
    first = await gw.client.post("/v1/chat/completions", json=chat_body(), **authorized())
    assert first.status_code == 200
    await MemoryKeyStore(keys).update("k1", revoked=True)
    for _ in range(60):  # re-read within a second
        response = await gw.client.post("/v1/chat/completions", json=chat_body(), **authorized())
        if response.status_code == 401:
            break
        await asyncio.sleep(0.05)
    assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]
