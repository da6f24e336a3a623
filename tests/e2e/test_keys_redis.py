"""API keys, limits and budgets end to end: the ``ttc-gateway keys`` CLI, real Redis, real
llama.cpp, gateway processes as users start them, and the official ``openai`` SDK.

Two gateway processes share one Redis: their combined traffic never passes a key's limit or
budget. Redis is killed during traffic and started again: the documented policy holds
(``open``: keys seen before keep working, others get 503; ``closed``: 503), nothing is a 500,
and limits and bookkeeping resume.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.access.stores import WINDOW_S
from tests.processes import RedisServer, gateway_cli, llamacpp_pool, quiet_server, redis_server

pytestmark = pytest.mark.llamacpp

MESSAGES = [{"role": "user", "content": "Say hi."}]
INPUT_PRICE, OUTPUT_PRICE = 1e-6, 2e-6


@pytest.fixture(scope="module")
def redis_proc() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def prices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prices") / "prices.yaml"
    path.write_text(
        "version: test\nmodels:\n  smollm2:\n"
        f"    input_cost_per_token: {INPUT_PRICE}\n    output_cost_per_token: {OUTPUT_PRICE}\n"
    )
    return path


def gateway_config(llamacpp_url: str, prices: Path, **state: Any) -> dict[str, Any]:
    return {
        "server": quiet_server(),
        "metering": {"prices_file": str(prices)},
        "state": state,
        "pools": [llamacpp_pool(llamacpp_url)],
    }


@pytest.fixture(scope="module")
def gateways(
    llamacpp: tuple[str, Any], redis_proc: RedisServer, prices: Path
) -> Iterator[list[str]]:
    """Two gateway processes on one Redis (found through REDIS_URL), on_failure=open."""
    with ExitStack() as stack:
        urls = [
            stack.enter_context(
                gateway_cli(gateway_config(llamacpp[0], prices), env={"REDIS_URL": redis_proc.url})
            )[0]
            for _ in range(2)
        ]
        yield urls


def keys(redis_url: str, *args: str) -> Any:
    """``ttc-gateway keys ... --json``, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args, "--redis-url", redis_url, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def key_usage(redis_url: str, key_id: str) -> dict[str, Any]:
    return next(k for k in keys(redis_url, "list") if k["id"] == key_id)


def sdk(gateway_url: str, key: str, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=gateway_url + "/v1", api_key=key, timeout=60, **{"max_retries": 0, **options}
    )


async def ask(client: openai.AsyncOpenAI, **extra: Any) -> Any:
    return await client.chat.completions.create(
        model="smollm2", messages=MESSAGES, max_tokens=4, temperature=0, **extra
    )


def metric(gateway_url: str, name: str) -> float:
    with urllib.request.urlopen(gateway_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def start_of_a_fresh_window(margin_s: float = 20) -> None:
    """Rate windows are calendar minutes: start a limit test with ``margin_s`` left in one,
    so all of its requests fall in the same window."""
    left = WINDOW_S - time.time() % WINDOW_S
    if left < margin_s:
        time.sleep(left + 0.05)


async def test_keys_are_required_once_one_exists_and_revocation_reaches_every_replica(
    gateways: list[str], redis_proc: RedisServer
) -> None:
    created = keys(redis_proc.url, "create", "--name", "alice")[0]
    secret = created["key"]
    assert secret.startswith("ttc-") and "key" not in keys(redis_proc.url, "list")[0]
    await asyncio.sleep(1.1)  # each replica remembers "no key exists" for up to a second
    for url in gateways:
        with pytest.raises(openai.AuthenticationError) as missing:
            await ask(sdk(url, "sk-not-a-gateway-key"))
        assert missing.value.status_code == 401
        answer = await ask(sdk(url, secret))
        assert answer.choices[0].message.content
    keys(redis_proc.url, "revoke", created["id"])
    for url in gateways:  # no cache: the very next request is refused, on both
        with pytest.raises(openai.AuthenticationError) as revoked:
            await ask(sdk(url, secret))
        assert "revoked" in str(revoked.value)


async def test_two_replicas_never_admit_more_than_the_requests_per_minute(
    gateways: list[str], redis_proc: RedisServer
) -> None:
    secret = keys(redis_proc.url, "create", "--name", "rpm", "--rpm", "7")[0]["key"]
    start_of_a_fresh_window()
    clients = [sdk(url, secret) for url in gateways]
    results = await asyncio.gather(
        *(ask(clients[i % 2]) for i in range(24)), return_exceptions=True
    )
    served = [r for r in results if not isinstance(r, BaseException)]
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(served) == 7 and len(limited) == 17, results
    assert 1 <= int(limited[0].response.headers["retry-after"]) <= WINDOW_S


async def test_two_replicas_never_spend_more_than_the_budget_and_the_spend_is_the_metered_cost(
    gateways: list[str], redis_proc: RedisServer
) -> None:
    # One request reserves its worst case (7 bytes + 8 + 64 template tokens, 4 generated, at
    # these prices) and settles to its real cost, which is smaller: the budget fits 3
    # reservations at once and more requests over time, but never more than the budget.
    budget = 3.5 * (79 * INPUT_PRICE + 4 * OUTPUT_PRICE)
    created = keys(redis_proc.url, "create", "--name", "budget", "--budget-usd", str(budget))[0]
    clients = [sdk(url, created["key"]) for url in gateways]
    served: list[Any] = []
    refused: list[openai.RateLimitError] = []
    for _ in range(4):  # waves of concurrent requests until the budget is gone
        results = await asyncio.gather(
            *(ask(clients[i % 2]) for i in range(6)), return_exceptions=True
        )
        served += [r for r in results if not isinstance(r, BaseException)]
        refused += [r for r in results if isinstance(r, openai.RateLimitError)]
    assert served and refused
    assert all(e.code == "insufficient_quota" for e in refused)
    costs = [r.model_extra["ttc"]["cost"]["price_table_usd"] for r in served]
    usage = key_usage(redis_proc.url, created["id"])
    assert usage["spent_usd"] == pytest.approx(sum(costs), rel=1e-6)
    assert usage["spent_usd"] <= budget and usage["reserved_usd"] == 0


async def test_a_budget_refusal_is_not_retried_by_the_sdk(
    gateways: list[str], redis_proc: RedisServer
) -> None:
    secret = keys(redis_proc.url, "create", "--name", "broke", "--budget-usd", "0")[0]["key"]
    before = metric(gateways[0], 'ttc_access_denied_total{reason="budget"}')
    with pytest.raises(openai.RateLimitError) as refused:
        await ask(sdk(gateways[0], secret, max_retries=2))  # the SDK retries 429s by default
    assert refused.value.code == "insufficient_quota"
    assert metric(gateways[0], 'ttc_access_denied_total{reason="budget"}') == before + 1


async def test_strategy_and_k_limits_name_the_header(
    gateways: list[str], redis_proc: RedisServer
) -> None:
    secret = keys(
        redis_proc.url, "create", "--name", "mv", "--max-k", "2", "--strategies", "majority_vote"
    )[0]["key"]
    client = sdk(gateways[0], secret)
    with pytest.raises(openai.PermissionDeniedError) as too_many:
        await ask(client, extra_headers={"X-TTC-Strategy": "majority_vote", "X-TTC-K": "3"})
    assert too_many.value.body["param"] == "X-TTC-K"  # type: ignore[index]
    with pytest.raises(openai.PermissionDeniedError) as other:
        await ask(client, extra_headers={"X-TTC-Strategy": "first_finish", "X-TTC-K": "2"})
    assert other.value.body["param"] == "X-TTC-Strategy"  # type: ignore[index]
    voted = await ask(client, extra_headers={"X-TTC-Strategy": "majority_vote", "X-TTC-K": "2"})
    assert voted.model_extra["ttc"]["samples"]["launched"] == 2


async def test_redis_killed_during_traffic_follows_the_policy_and_limits_resume(
    llamacpp: tuple[str, Any], prices: Path, tmp_path: Path
) -> None:
    with redis_server() as redis_proc, ExitStack() as stack:
        open_url = stack.enter_context(
            gateway_cli(
                gateway_config(llamacpp[0], prices, timeout_s=0.3),
                env={"REDIS_URL": redis_proc.url},
            )
        )[0]
        closed_url = stack.enter_context(
            gateway_cli(
                gateway_config(llamacpp[0], prices, on_failure="closed", timeout_s=0.3),
                env={"REDIS_URL": redis_proc.url},
            )
        )[0]
        known = keys(redis_proc.url, "create", "--name", "known", "--rpm", "1000")[0]
        unseen = keys(redis_proc.url, "create", "--name", "unseen")[0]
        known_costs = [
            (await ask(sdk(url, known["key"]))).model_extra["ttc"]["cost"]["price_table_usd"]
            for url in (open_url, closed_url)
        ]

        redis_proc.kill()
        async with httpx.AsyncClient(timeout=30) as http:

            async def status(url: str, key: str) -> int:
                response = await http.post(
                    url + "/v1/chat/completions",
                    json={"model": "smollm2", "messages": MESSAGES, "max_tokens": 4},
                    headers={"Authorization": f"Bearer {key}"},
                )
                if response.status_code == 200:
                    if key == known["key"]:
                        known_costs.append(response.json()["ttc"]["cost"]["price_table_usd"])
                else:
                    assert response.json()["error"]["code"] == "shared_state_unavailable"
                    assert response.headers["retry-after"] == "1"
                return response.status_code

            during = await asyncio.gather(*(status(open_url, known["key"]) for _ in range(5)))
            assert during == [200] * 5  # open: a key this replica admitted before
            assert await status(open_url, unseen["key"]) == 503  # never seen: cannot check
            assert await status(closed_url, known["key"]) == 503  # closed: nothing passes
            assert metric(open_url, "ttc_shared_state_up") == 0
            assert metric(open_url, "ttc_shared_state_pending_settlements") == 5

            redis_proc.start()  # same data directory: keys and counters survive the crash
            assert await status(closed_url, known["key"]) == 200
            assert await status(open_url, unseen["key"]) == 200
        assert metric(open_url, "ttc_shared_state_up") == 1
        assert metric(open_url, "ttc_shared_state_pending_settlements") == 0
        # a settlement the closed replica could not make in time (a slow machine) is retried
        # every second, not only on its next request
        for _ in range(100):
            if not metric(closed_url, "ttc_shared_state_pending_settlements"):
                break
            await asyncio.sleep(0.1)
        assert metric(closed_url, "ttc_shared_state_pending_settlements") == 0
        # what the key spent during the outage was booked once Redis was back (replayed)
        assert len(known_costs) == 8
        spent = key_usage(redis_proc.url, known["id"])["spent_usd"]
        assert spent == pytest.approx(sum(known_costs), rel=1e-6)
        limited = keys(redis_proc.url, "create", "--name", "limited", "--rpm", "2")[0]
        start_of_a_fresh_window(margin_s=10)
        client = sdk(open_url, limited["key"])
        await ask(client)
        await ask(client)
        with pytest.raises(openai.RateLimitError):
            await ask(client)
