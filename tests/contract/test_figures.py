"""The figures and statuses the gateway reports, checked by value against stand-in engines.

Each test here failed on the gateway before the accounting issue: a figure existed but was
wrong (a strategy success counted as a 500, a broken stream as a 200, a cost cap that did
nothing, spending forgotten on restart, errors that named a worker's address).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.access.stores import KeyFile, KeyLimits, KeyRecord, MemoryKeyStore, hash_secret
from gateway.config import AuthConfig, EstimatedEnergy, MeteringConfig, WorkerConfig
from tests.standin import SampleScript, Script, serve_standin
from tests.standin_fixtures import (
    PUBLIC_MODEL,
    RunningGateway,
    chat_body,
    pool_for,
    serve_gateway,
    sse_events,
)

IN, OUT = 1e-6, 1e-4  # USD per prompt / generated token of the test's price book
TEXT = "one two three four five six seven eight nine ten eleven twelve"


def requests_by_status(gw: RunningGateway) -> dict[str, float]:
    registry = gw.app.state.gateway.metrics.registry
    counts: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name == "ttc_requests":
            for sample in metric.samples:
                if sample.name == "ttc_requests_total":
                    status = sample.labels["status"]
                    counts[status] = counts.get(status, 0) + sample.value
    return {status: count for status, count in counts.items() if count}


def strategy(name: str, **params: Any) -> dict[str, str]:
    return {"X-TTC-Strategy": name, **{f"X-TTC-{k}": str(v) for k, v in params.items()}}


@pytest.fixture
def prices(tmp_path: Path) -> MeteringConfig:
    path = tmp_path / "prices.yaml"
    path.write_text(
        f"models:\n  {PUBLIC_MODEL}:\n    input_cost_per_token: {IN}\n"
        f"    output_cost_per_token: {OUT}\n"
    )
    return MeteringConfig(prices_file=str(path))


async def test_every_request_is_counted_once_with_the_status_it_ended_with() -> None:
    async with (
        serve_standin("vllm", Script.text(TEXT)) as worker,
        serve_gateway(pool_for("vllm", worker.url)) as gw,
    ):
        for body, headers in [
            (chat_body(max_tokens=8), strategy("first_finish", K=2)),
            (chat_body(max_tokens=8), strategy("majority_vote", K=2)),
            (chat_body(max_tokens=8, stream=True), strategy("short_m_at_k", K=3, M=2)),
            (chat_body(max_tokens=8), {}),
            (chat_body(max_tokens=8, stream=True), {}),
        ]:
            answer = await gw.client.post("/v1/chat/completions", json=body, headers=headers)
            assert answer.status_code == 200
        bad = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers=strategy("nonesuch")
        )
        assert bad.status_code == 400
        no_samples = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers=strategy("majority_vote", K=0)
        )
        assert no_samples.status_code == 400
        assert requests_by_status(gw) == {"200": 5, "400": 2}
        # a refused parameter is counted under the strategy that refused it
        refused = {"strategy": "majority_vote", "status": "400"}
        assert await gw.metric("ttc_requests_total", **refused) == 1


async def test_a_stream_broken_after_it_started_counts_as_an_error_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script(samples=[SampleScript(text=TEXT, token_delay_s=0.01)], die_after_chunks=4)
    async with (
        serve_standin("vllm", script) as worker,
        serve_gateway(pool_for("vllm", worker.url)) as gw,
    ):
        with caplog.at_level(logging.INFO):
            for headers in ({}, strategy("majority_vote", K=2)):
                answer = await gw.client.post(
                    "/v1/chat/completions",
                    json=chat_body(max_tokens=20, stream=True),
                    headers={**headers, "X-Request-Id": "broken-" + str(len(headers))},
                )
                assert answer.status_code == 200  # the stream had started
                events = sse_events(answer.text)
                assert events[-1] == "[DONE]" and "error" in events[-2], events[-3:]
        # Both are 502s: the single stream broke; every sample of the vote failed.
        statuses = requests_by_status(gw)
        assert statuses == {"502": 2}, statuses
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("broke" in w for w in warnings), warnings
        access = [r.getMessage() for r in caplog.records if r.name == "ttc.access"]
        for request_id in ("broken-0", "broken-2"):
            assert any(request_id in line and " 200->502 " in line for line in access), access


async def test_a_deadline_names_the_header_and_no_address_reaches_the_client() -> None:
    slow = Script(samples=[SampleScript(text=TEXT, token_delay_s=0.5)])
    async with (
        serve_standin("vllm", slow) as worker,
        serve_gateway(pool_for("vllm", worker.url)) as gw,
    ):
        answer = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-TTC-Deadline-Ms": "300"}
        )
        assert answer.status_code == 504
        error = answer.json()["error"]
        assert error["param"] == "X-TTC-Deadline-Ms" and error["code"] == "deadline_exceeded"
        assert "X-TTC-Deadline-Ms: 300" in error["message"]
        host = worker.url.split("://")[1]
        worker.engine.script = Script(status=500, error_message="boom")
        failed = await gw.client.post("/v1/chat/completions", json=chat_body())
        assert failed.status_code == 502 and "pool-0" in failed.json()["error"]["message"]
        for text in (answer.text, failed.text):
            assert host not in text and "127.0.0.1" not in text


async def test_openai_surface_errors_name_the_field_the_client_sent() -> None:
    async with (
        serve_standin("vllm", Script.text(TEXT)) as worker,
        serve_gateway(pool_for("vllm", worker.url)) as gw,
    ):
        null_content = await gw.client.post(
            "/v1/chat/completions",
            json={"model": PUBLIC_MODEL, "messages": [{"role": "user", "content": None}]},
        )
        assert null_content.status_code == 400
        assert null_content.json()["error"]["param"] == "messages[0].content"
        # An assistant turn that made tool calls may have no content.
        tool_turn = chat_body(max_tokens=4)
        tool_turn["messages"] += [
            {"role": "assistant", "content": None, "tool_calls": []},
            {"role": "user", "content": "and?"},
        ]
        assert (await gw.client.post("/v1/chat/completions", json=tool_turn)).status_code == 200
        in_body = await gw.client.post(
            "/v1/chat/completions", json=chat_body(ttc={"strategy": "nonesuch"})
        )
        assert in_body.json()["error"]["param"] == "ttc.strategy"
        in_header = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers=strategy("nonesuch")
        )
        assert in_header.json()["error"]["param"] == "X-TTC-Strategy"
        cost = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-TTC-Max-Cost-USD": "-1"}
        )
        assert cost.status_code == 400 and cost.json()["error"]["param"] == "X-TTC-Max-Cost-USD"
        model = await gw.client.get(f"/v1/models/{PUBLIC_MODEL}")
        assert model.status_code == 200 and model.json()["id"] == PUBLIC_MODEL
        missing = await gw.client.get("/v1/models/nonesuch")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_max_cost_usd_caps_a_request(prices: MeteringConfig) -> None:
    script = Script(samples=[SampleScript(text=TEXT * 4, token_delay_s=0.005)])
    async with (
        serve_standin("vllm", script) as worker,
        serve_gateway(pool_for("vllm", worker.url), metering=prices) as gw,
    ):
        # the stand-in's tokenizer counts the rendered prompt's characters
        rendered = (
            await gw.client.post(
                worker.url + "/tokenize",
                json={"model": "engine-model", "messages": chat_body()["messages"]},
            )
        ).json()["count"]
        prompt_usd = rendered * IN
        # the prompt alone is dearer than the cap: refused before anything is generated
        refused = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={"X-TTC-Max-Cost-USD": f"{prompt_usd / 2}"},
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "X-TTC-Max-Cost-USD"
        generations = [r for r in worker.engine.requests if r.path == "/v1/chat/completions"]
        assert generations == []
        # single: max_tokens is what the cap pays for after the prompt
        cap = prompt_usd + 5.5 * OUT
        single = await gw.client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-TTC-Max-Cost-USD": f"{cap}"}
        )
        assert single.status_code == 200
        sent = [r for r in worker.engine.requests if r.path == "/v1/chat/completions"][-1]
        assert sent.body["max_tokens"] == 5
        assert single.json()["ttc"]["cost"]["price_table_usd"] <= cap
        # exactly one token's worth after the prompt buys one token (no rounding down to 0)
        one = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={"X-TTC-Max-Cost-USD": f"{prompt_usd + OUT:.12g}"},
        )
        assert one.status_code == 200, one.text
        sent = [r for r in worker.engine.requests if r.path == "/v1/chat/completions"][-1]
        assert sent.body["max_tokens"] == 1
        # ... but not one for each of n=2 choices: refused, not sent with a token each anyway
        two = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(n=2),
            headers={"X-TTC-Max-Cost-USD": f"{prompt_usd + OUT:.12g}"},
        )
        assert two.status_code == 400 and two.json()["error"]["param"] == "X-TTC-Max-Cost-USD"
        # a strategy stops once its samples' cost reaches the cap, answers, and says so
        cap = 30 * OUT
        vote = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(max_tokens=200),
            headers={**strategy("majority_vote", K=4), "X-TTC-Max-Cost-USD": f"{cap}"},
        )
        assert vote.status_code == 200 and vote.headers["X-TTC-Truncated"] == "true"
        spent = vote.json()["ttc"]["cost"]["price_table_usd"]
        # the cap is checked on every token: at most one token per sample over it
        assert cap <= spent <= cap + 4 * OUT, (spent, cap)
        usage = vote.json()["usage"]
        assert usage["completion_tokens"] < 4 * 48


async def test_a_key_s_spending_survives_a_restart_in_keys_file_mode(
    tmp_path: Path, prices: MeteringConfig
) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    secret = "ttc-figures-test-secret"
    budget = 12 * OUT
    await MemoryKeyStore(keys).add(
        KeyRecord("k1", "t", hash_secret(secret), time.time(), limits=KeyLimits(budget_usd=budget))
    )
    auth = {"Authorization": f"Bearer {secret}"}
    async with serve_standin("vllm", Script.text(TEXT)) as worker:
        pool = pool_for("vllm", worker.url)
        settings = {"auth": AuthConfig(keys_file=str(keys.path)), "metering": prices}
        async with serve_gateway(pool, **settings) as gw:
            answer = await gw.client.post(
                "/v1/chat/completions", json=chat_body(max_tokens=3), headers=auth
            )
            assert answer.status_code == 200
            cost = answer.json()["ttc"]["cost"]["price_table_usd"]
        # what `ttc-gateway keys list --keys-file` and a restarted gateway read
        ((_, usage),) = await MemoryKeyStore(keys).records()
        assert usage.spent_usd == pytest.approx(cost)
        async with serve_gateway(pool, **settings) as gw:
            statuses = []
            for _ in range(6):
                response = await gw.client.post(
                    "/v1/chat/completions", json=chat_body(max_tokens=3), headers=auth
                )
                statuses.append(response.status_code)
            assert 429 in statuses  # the budget, with what the first gateway spent, ran out
            refused = statuses.index(429)
        ((_, usage),) = await MemoryKeyStore(keys).records()
        assert usage.spent_usd <= budget
        async with serve_gateway(pool, **settings) as gw:  # and stays spent
            again = await gw.client.post(
                "/v1/chat/completions", json=chat_body(max_tokens=3), headers=auth
            )
            assert again.status_code == 429 and refused >= 1
            assert again.json()["error"]["code"] == "insufficient_quota"


async def test_a_spending_file_that_cannot_be_written_fails_no_request(
    tmp_path: Path, prices: MeteringConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A keys file in a folder the gateway cannot write (a mounted Secret, say): the answer is
    still 200 and counted, the key still charged in memory, and the failure is logged."""
    keys = KeyFile(tmp_path / "keys.json")
    await MemoryKeyStore(keys).add(KeyRecord("k1", "t", hash_secret("ttc-y"), time.time()))
    # root writes anywhere: a folder where the temporary file goes makes the write fail
    keys.usage_path.with_name(f"{keys.usage_path.name}.{os.getpid()}.tmp").mkdir()
    async with (
        serve_standin("vllm", Script.text(TEXT)) as worker,
        serve_gateway(
            pool_for("vllm", worker.url),
            auth=AuthConfig(keys_file=str(keys.path)),
            metering=prices,
        ) as gw,
    ):
        with caplog.at_level(logging.ERROR, logger="ttc.keys"):
            answer = await gw.client.post(
                "/v1/chat/completions",
                json=chat_body(max_tokens=3),
                headers={"Authorization": "Bearer ttc-y"},
            )
        assert answer.status_code == 200
        assert requests_by_status(gw) == {"200": 1}
        assert any("cannot keep key spending" in r.getMessage() for r in caplog.records)
        ((_, usage),) = await gw.app.state.gateway.access.store.records()
        assert usage.spent_usd == pytest.approx(answer.json()["ttc"]["cost"]["price_table_usd"])


async def test_ready_shows_workers_only_to_the_admin_while_keys_are_required(
    tmp_path: Path,
) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    await MemoryKeyStore(keys).add(KeyRecord("k1", "t", hash_secret("ttc-x"), time.time()))
    async with (
        serve_standin("vllm") as worker,
        serve_gateway(
            pool_for("vllm", worker.url),
            auth=AuthConfig(keys_file=str(keys.path), admin_token="admin-secret"),
        ) as gw,
    ):
        anonymous = await gw.client.get("/ready")
        assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready"}
        with_key = await gw.client.get("/ready", headers={"Authorization": "Bearer ttc-x"})
        assert "pools" not in with_key.json()
        admin = await gw.client.get("/ready", headers={"Authorization": "Bearer admin-secret"})
        (pool,) = admin.json()["pools"]
        assert pool["workers"][0]["name"] == "pool-0"


async def test_the_first_answer_after_start_carries_its_energy() -> None:
    """No interval had closed with work on the worker yet, so the first answer said 0 J."""
    slow = Script(samples=[SampleScript(text=TEXT, token_delay_s=0.01)])
    async with serve_standin("vllm", slow) as worker:
        estimate = EstimatedEnergy(source="estimate", watts=100)
        pool = pool_for("vllm", worker.url).model_copy(
            update={"workers": [WorkerConfig(url=worker.url, energy=estimate)]}
        )
        async with serve_gateway(pool, metering=MeteringConfig(interval_s=60)) as gw:
            answer = await gw.client.post("/v1/chat/completions", json=chat_body(max_tokens=8))
            assert answer.status_code == 200
            ttc = answer.json()["ttc"]
            assert ttc["energy"]["method"] == "estimated"
            # 100 W while the request ran (~0.1 s): a few joules, not 0
            assert 1 < float(answer.headers["X-TTC-Energy-J"]) < 100
            # the header has 6 significant digits
            assert float(answer.headers["X-TTC-Energy-J"]) == pytest.approx(
                ttc["energy_joules"], rel=1e-5
            )


async def test_a_non_streamed_single_its_client_left_bills_the_prompt() -> None:
    """The engine sends a non-streamed answer's headers only when it is done, so a client that
    leaves cuts the call before any usage: its prompt was billed nothing. Now the worker's
    tokenizer counts it (marked estimated); what it generated the gateway never saw."""
    slow = Script(samples=[SampleScript(text=TEXT * 10, token_delay_s=0.05)])
    async with (
        serve_standin("vllm", slow) as worker,
        serve_gateway(pool_for("vllm", worker.url)) as gw,
    ):
        with contextlib.suppress(httpx.TimeoutException):
            await gw.client.post("/v1/chat/completions", json=chat_body(), timeout=0.3)
        for _ in range(100):
            if requests_by_status(gw).get("499"):
                break
            await asyncio.sleep(0.02)
        assert requests_by_status(gw) == {"499": 1}
        rendered = (
            await gw.client.post(
                worker.url + "/tokenize",
                json={"model": "engine-model", "messages": chat_body()["messages"]},
            )
        ).json()["count"]
        registry = gw.app.state.gateway.metrics.registry
        labels = {"strategy": "single", "model": PUBLIC_MODEL, "role": "default"}
        prompt = registry.get_sample_value("ttc_tokens_total", {**labels, "kind": "prompt"})
        estimated = registry.get_sample_value(
            "ttc_tokens_total", {**labels, "kind": "estimated_prompt"}
        )
        assert prompt == estimated == rendered
