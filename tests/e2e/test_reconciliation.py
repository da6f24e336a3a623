"""Every figure reconciles: what clients were told, what Prometheus scraped, what each key was
charged and what the engines counted, on a scripted workload with known outcomes.

Two real llama.cpp workers behind the real gateway CLI (API keys in a keys file, a price book),
a real Prometheus scraping the gateway every second, the official ``openai`` SDK as the client.

- warm-up: one request of each client-error kind (so those series exist before the windows
  below; 5xx and 499 series exist from the gateway's start);
- clean phase: N answers per strategy, streamed and not, over two API keys with budgets;
- faulty phase: client errors (400, 404, a key with no budget left: 429), client disconnects
  (499), a deadline that stops a vote and one that cuts a ``single`` (504), token and cost
  budgets that stop votes, then a worker SIGKILLed mid-stream (502).

Checks, each against values, not existence:

(a) Prometheus's ttc_requests_total by status equals the statuses the clients saw (499 for the
    clients that left); ttc_tokens_total by kind and ttc_cost_usd_total equal the sums over the
    answers of the clean phase exactly;
(b) each key's recorded spend (``ttc-gateway keys list --keys-file``) equals the sum of its
    answers' ``ttc.cost.price_table_usd``; the key used for the requests that return no cost
    was charged exactly the rest of Prometheus's cost;
(c) the gateway's token totals equal llama.cpp's own counters over both workers: prompt tokens
    (``prompt_tokens_total + prompt_tokens_cached_total``) and cached prompt tokens exactly,
    except for the prompts the gateway estimated for calls cut before the engine said them
    (the engine may not have finished prefilling them; the estimate cannot know what was
    cached), generated tokens within the decode steps that were running when an aborted
    stream was closed (at most STEPS_IN_FLIGHT per aborted sequence);
(d) the Overview dashboard's error-ratio query returns 0 over the clean phase and exactly the
    5xx share over the faulty phase.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.access.stores import KeyFile, KeyLimits, KeyRecord, MemoryKeyStore, hash_secret
from tests.processes import (
    gateway_cli,
    llamacpp_worker,
    prometheus_server,
    stop_process,
)

pytestmark = pytest.mark.llamacpp

REPO = Path(__file__).resolve().parents[2]
MODEL = "smollm2"
PRICE = {"input": 1e-6, "cached": 2.5e-7, "output": 4e-6}  # USD per token
KEYS = {"A": "ttc-reconcile-key-a", "B": "ttc-reconcile-key-b"}
FAULTS_KEY = "ttc-reconcile-faults"  # for requests whose client gets no cost back
EMPTY_KEY = "ttc-reconcile-empty"  # a budget of 0: every request is a 429
STEPS_IN_FLIGHT = 4  # decode steps an engine may run after a stream is closed, per sequence
QUESTION = [{"role": "user", "content": "What is 6 times 7? End with 'The answer is N.'"}]
LONG = [{"role": "user", "content": "Count from one to two hundred, one number per line."}]
RUN_ON = {"ignore_eos": True}  # llama.cpp: generate up to max_tokens, so every cut is sure


def error_ratio_query() -> str:
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/ttc-overview.json").read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Error ratio (5xx)"]
    return str(panel["targets"][0]["expr"])


def cost_of(usage: dict[str, Any]) -> float:
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return (
        (usage["prompt_tokens"] - cached) * PRICE["input"]
        + cached * PRICE["cached"]
        + usage["completion_tokens"] * PRICE["output"]
    )


@dataclass
class Ledger:
    """What the clients were told."""

    statuses: Counter[str] = field(default_factory=Counter)
    prompt: int = 0
    cached: int = 0
    completion: int = 0
    cost: float = 0.0
    by_key: dict[str, float] = field(default_factory=lambda: {"A": 0.0, "B": 0.0})
    aborted_sequences: int = 0  # samples or choices stopped before they finished

    def answer(self, key: str | None, usage: dict[str, Any], cost: float | None) -> None:
        self.statuses["200"] += 1
        self.prompt += usage["prompt_tokens"]
        self.cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        self.completion += usage["completion_tokens"]
        expected = cost_of(usage)
        if cost is not None:  # the answer's own figure agrees with its usage
            assert cost == pytest.approx(expected, rel=1e-9, abs=1e-15)
        self.cost += expected
        if key is not None:
            self.by_key[key] += expected


class Engines:
    """llama.cpp's own counters, summed over the workers."""

    NAMES = (
        "llamacpp:prompt_tokens_total",
        "llamacpp:prompt_tokens_cached_total",
        "llamacpp:tokens_predicted_total",
    )

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def read(self) -> dict[str, float]:
        totals = dict.fromkeys(self.NAMES, 0.0)
        for url in self.urls:
            for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
                name = line.split(" ", 1)[0]
                if name in totals:
                    totals[name] += float(line.rsplit(" ", 1)[1])
        return totals

    def idle(self) -> None:
        deadline = time.monotonic() + 30
        for url in self.urls:
            while time.monotonic() < deadline:
                text = httpx.get(url + "/metrics", timeout=5).text
                busy = [
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("llamacpp:requests_processing")
                ]
                if busy == [0.0]:
                    break
                time.sleep(0.05)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, query: str, at: float | None = None) -> list[dict[str, Any]]:
        """The result list of an instant query (``at``: evaluation time)."""
        params: dict[str, Any] = {"query": query}
        if at is not None:
            params["time"] = at
        answer = httpx.get(self.url + "/api/v1/query", params=params, timeout=10).json()
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, query: str, at: float | None = None) -> float:
        result = self.query(query, at)
        return float(result[0]["value"][1]) if result else 0.0

    def statuses(self) -> Counter[str]:
        return Counter(
            {
                r["metric"]["status"]: int(float(r["value"][1]))
                for r in self.query("sum by (status) (ttc_requests_total)")
                if float(r["value"][1])
            }
        )

    def tokens(self) -> dict[str, float]:
        return {
            kind: self.value(f'sum(ttc_tokens_total{{kind="{kind}"}})')
            for kind in ("prompt", "cached_prompt", "estimated_prompt", "completion")
        }

    def cost(self) -> float:
        return self.value('sum(ttc_cost_usd_total{basis="price_table"})')

    def settle(self) -> float:
        """Wait for scrapes that see everything so far; return a time after them."""
        time.sleep(2.5)
        return time.time()

    def wait_scraping(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.value('count_over_time(up{job="ttc-gateway"}[1m])') >= 2:
                return
            time.sleep(0.5)
        raise AssertionError("Prometheus is not scraping the gateway")

    def scrapes(self) -> list[float]:
        """The times of the gateway's scrapes of the last ten minutes (a phase of the workload
        takes more than one on a loaded machine)."""
        (series,) = self.query('up{job="ttc-gateway"}[10m]')
        return [float(t) for t, _ in series["values"]]

    def ratio_over(self, query: str, started: float) -> float:
        """``query`` (a dashboard's, with ``$__rate_interval``) over the window from the last
        scrape before ``started`` to the latest scrape, evaluated at that scrape: with samples
        at both ends rate() extrapolates nothing, so a ratio of rates is the ratio of the
        increases (all series exist before the window)."""
        times = self.scrapes()
        first = max(t for t in times if t < started)
        last = times[-1]
        window_ms = round((last - first) * 1000) + 1  # the first scrape inside, either way
        return self.value(query.replace("$__rate_interval", f"{window_ms}ms"), at=last)


@pytest.fixture(scope="module")
def workers() -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    with llamacpp_worker() as first, llamacpp_worker() as second:
        yield [first, second]


def _keys_file(directory: Path) -> Path:
    keys = KeyFile(directory / "keys.json")
    store = MemoryKeyStore(keys)
    records = [
        KeyRecord(
            "key-a", "A", hash_secret(KEYS["A"]), time.time(), limits=KeyLimits(budget_usd=5)
        ),
        KeyRecord(
            "key-b", "B", hash_secret(KEYS["B"]), time.time(), limits=KeyLimits(budget_usd=5)
        ),
        KeyRecord(
            "faults", "F", hash_secret(FAULTS_KEY), time.time(), limits=KeyLimits(budget_usd=5)
        ),
        KeyRecord(
            "empty", "Z", hash_secret(EMPTY_KEY), time.time(), limits=KeyLimits(budget_usd=0)
        ),
    ]
    for record in records:
        asyncio.run(store.add(record))
    return keys.path


def _spent(keys_file: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "list", "--keys-file", str(keys_file), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    keys = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return {key["name"]: float(key["spent_usd"]) for key in keys}


def _client(gateway: str, secret: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway + "/v1", api_key=secret, max_retries=0, timeout=120)


def test_every_figure_reconciles(workers: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    urls = [url for url, _ in workers]
    engines = Engines(urls)
    with tempfile.TemporaryDirectory() as tmp, prometheus_server() as (prometheus_url, targets):
        home = Path(tmp)
        prices = home / "prices.yaml"
        prices.write_text(
            f"models:\n  {MODEL}:\n    input_cost_per_token: {PRICE['input']}\n"
            f"    cache_read_input_token_cost: {PRICE['cached']}\n"
            f"    output_cost_per_token: {PRICE['output']}\n"
        )
        keys_file = _keys_file(home)
        config = {
            "server": {"log_level": "info"},
            "health": {"interval_s": 1},
            "metering": {"prices_file": str(prices)},
            "auth": {"keys_file": str(keys_file)},
            "pools": [
                {
                    "name": "llama",
                    "engine": "llamacpp",
                    "model": MODEL,
                    "workers": [{"url": u} for u in urls],
                }
            ],
        }
        with gateway_cli(config, log=home / "gateway.log") as (gateway, _):
            targets.write_text(json.dumps([{"targets": [gateway.split("://", 1)[1]]}]))
            prometheus = Prometheus(prometheus_url)
            prometheus.wait_scraping()
            report = asyncio.run(_workload(gateway, engines, prometheus, workers))
            log = (home / "gateway.log").read_text(errors="replace")
        spent = _spent(keys_file)

    clean, faulty, expected_statuses, seen = report["clean"], report["faulty"], *report["end"]
    # (a) requests by status: what the clients saw, each request once
    assert seen == expected_statuses, (seen, expected_statuses)
    # (a) tokens and cost of the clean phase: the sums over the answers, exactly
    assert clean["prometheus_tokens"] == {
        "prompt": clean["ledger"].prompt,
        "cached_prompt": clean["ledger"].cached,
        "estimated_prompt": 0,
        "completion": clean["ledger"].completion,
    }
    assert clean["prometheus_cost"] == pytest.approx(clean["ledger"].cost, rel=1e-9)
    # (b) each key's spend: the sum of its answers' costs; the rest went to the faults key
    for name in ("A", "B"):
        assert spent[name] == pytest.approx(report["ledger"].by_key[name], rel=1e-6, abs=1e-9)
    assert spent["F"] == pytest.approx(
        report["prometheus_cost_end"] - spent["A"] - spent["B"], rel=1e-6, abs=1e-9
    )
    assert spent["Z"] == 0
    # (c) the gateway's tokens against llama.cpp's counters, over the run up to the kill
    gateway_tokens, engine = report["gateway_tokens_before_kill"], report["engine_before_kill"]
    engine_prompt = (
        engine["llamacpp:prompt_tokens_total"] + engine["llamacpp:prompt_tokens_cached_total"]
    )
    assert (
        gateway_tokens["prompt"] - gateway_tokens["estimated_prompt"]
        <= engine_prompt
        <= gateway_tokens["prompt"]
    ), (gateway_tokens, engine)
    # an estimated prompt is billed as uncached (the tokenizer cannot know the engine's cache)
    assert (
        gateway_tokens["cached_prompt"]
        <= engine["llamacpp:prompt_tokens_cached_total"]
        <= gateway_tokens["cached_prompt"] + gateway_tokens["estimated_prompt"]
    ), (gateway_tokens, engine)
    extra = engine["llamacpp:tokens_predicted_total"] - gateway_tokens["completion"]
    assert 0 <= extra <= STEPS_IN_FLIGHT * report["aborted_sequences"], (
        extra,
        report["aborted_sequences"],
    )
    # (d) the dashboard's error ratio: 0 when clean, the 5xx share when not
    assert clean["error_ratio"] == 0
    assert faulty["error_ratio"] == pytest.approx(faulty["expected_ratio"], rel=1e-4)
    assert "Task was destroyed" not in log and "Traceback" not in log, log[-3000:]
    print_table(report, spent)


def print_table(report: dict[str, Any], spent: dict[str, float]) -> None:
    """The reconciliation table (pytest -s shows it)."""
    clean, ledger = report["clean"], report["clean"]["ledger"]
    gateway_tokens, engine = report["gateway_tokens_before_kill"], report["engine_before_kill"]
    rows = [
        ("requests by status", dict(report["end"][0]), dict(report["end"][1])),
        ("clean: prompt tokens", ledger.prompt, clean["prometheus_tokens"]["prompt"]),
        ("clean: cached prompt tokens", ledger.cached, clean["prometheus_tokens"]["cached_prompt"]),
        ("clean: completion tokens", ledger.completion, clean["prometheus_tokens"]["completion"]),
        ("clean: price-table cost $", f"{ledger.cost:.9f}", f"{clean['prometheus_cost']:.9f}"),
        ("key A spend $", f"{report['ledger'].by_key['A']:.9f}", f"{spent['A']:.9f}"),
        ("key B spend $", f"{report['ledger'].by_key['B']:.9f}", f"{spent['B']:.9f}"),
        (
            "faults key spend $ (= the rest)",
            f"{report['prometheus_cost_end'] - spent['A'] - spent['B']:.9f}",
            f"{spent['F']:.9f}",
        ),
        (
            "prompt tokens: llama.cpp vs gateway (estimated)",
            engine["llamacpp:prompt_tokens_total"] + engine["llamacpp:prompt_tokens_cached_total"],
            f"{gateway_tokens['prompt']:.0f} ({gateway_tokens['estimated_prompt']:.0f})",
        ),
        (
            "cached prompt tokens: llama.cpp vs gateway",
            engine["llamacpp:prompt_tokens_cached_total"],
            gateway_tokens["cached_prompt"],
        ),
        (
            "generated tokens: llama.cpp vs gateway (aborted sequences)",
            engine["llamacpp:tokens_predicted_total"],
            f"{gateway_tokens['completion']:.0f} ({report['aborted_sequences']})",
        ),
        ("error ratio, clean phase", 0, report["clean"]["error_ratio"]),
        (
            "error ratio, faulty phase",
            f"{report['faulty']['expected_ratio']:.6f}",
            f"{report['faulty']['error_ratio']:.6f}",
        ),
    ]
    print("\n| figure | expected | reported |\n|---|---:|---:|")
    for name, expected, reported in rows:
        print(f"| {name} | {expected} | {reported} |")


async def _workload(
    gateway: str,
    engines: Engines,
    prometheus: Prometheus,
    workers: list[tuple[str, subprocess.Popen[bytes]]],
) -> dict[str, Any]:
    ledger = Ledger()
    expected: Counter[str] = Counter()
    clients = {name: _client(gateway, secret) for name, secret in KEYS.items()}
    faults = _client(gateway, FAULTS_KEY)
    empty = _client(gateway, EMPTY_KEY)

    async def ask(key: str, strategy: str, stream: bool = False, **params: Any) -> None:
        headers = {"X-TTC-Strategy": strategy, **{f"X-TTC-{k}": str(v) for k, v in params.items()}}
        client = clients[key]
        if stream:
            chunks = await client.chat.completions.create(
                model=MODEL,
                messages=QUESTION,  # type: ignore[arg-type]
                max_tokens=24,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers,
            )
            usage = None
            async for chunk in chunks:
                extra = chunk.model_extra or {}
                if chunk.usage is not None:
                    usage = chunk.usage.model_dump()
                if "ttc" in extra:
                    ledger.aborted_sequences += extra["ttc"]["samples"]["aborted"]
            assert usage is not None
            ledger.answer(key, usage, None)
            expected["200"] += 1
            return
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=24,
            temperature=0.8,
            extra_headers=headers,
        )
        body = json.loads(raw.content)
        ttc = body["ttc"]
        if "samples" in ttc:
            ledger.aborted_sequences += ttc["samples"]["aborted"]
        ledger.answer(key, body["usage"], ttc["cost"]["price_table_usd"])
        expected["200"] += 1

    async def client_error(status: int, **create: Any) -> None:
        client = create.pop("client", clients["A"])
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(**{"model": MODEL, "messages": QUESTION, **create})
        assert caught.value.status_code == status
        expected[str(status)] += 1

    # -- warm-up: client-error series exist before the windows ------------------------------
    await client_error(400, temperature=5)
    await client_error(404, model="nonesuch")
    await client_error(429, client=empty)
    engines.idle()
    prometheus.settle()
    tokens_before, cost_before = prometheus.tokens(), prometheus.cost()

    # -- clean phase ----------------------------------------------------------------------------
    await asyncio.sleep(1.2)  # a scrape between the warm-up and the first request
    start_clean = time.time()
    for i in range(2):
        key = "AB"[i % 2]
        await ask(key, "single")
        await ask(key, "single", stream=True)
        await ask(key, "majority_vote", K=3)
        await ask(key, "first_finish", K=3)
        await ask(key, "short_m_at_k", K=4, M=2)
        await ask(key, "majority_vote", stream=True, K=2)
    await ask("A", "best_of_n", K=2)
    await ask("B", "cascade", K=2, Tau=1.0)
    await ask("A", "spec_reason", **{"Step-Tokens": 16, "Max-Steps": 3})
    engines.idle()
    prometheus.settle()
    tokens_after, cost_after = prometheus.tokens(), prometheus.cost()
    clean = {
        "ledger": ledger,
        "prometheus_tokens": {k: tokens_after[k] - tokens_before[k] for k in tokens_after},
        "prometheus_cost": cost_after - cost_before,
        "error_ratio": prometheus.ratio_over(error_ratio_query(), start_clean),
    }
    clean_ledger = Ledger(**{**ledger.__dict__, "statuses": Counter(ledger.statuses)})
    clean["ledger"] = clean_ledger

    # -- faulty phase ---------------------------------------------------------------------------
    await asyncio.sleep(1.2)
    start_faulty = time.time()
    before = Counter(expected)
    await client_error(400, temperature=5)
    await client_error(404, model="nonesuch")
    await client_error(429, client=empty)
    # budgets that stop a vote: it answers, truncated, and bills what it used
    for strategy_headers in (
        {"X-TTC-Max-Tokens-Total": "20"},  # the case: prompt tokens were 0
        {"X-TTC-Deadline-Ms": "800"},
        # the prompt (~45 tokens) and 6 generated tokens
        {"X-TTC-Max-Cost-USD": f"{6 * PRICE['output'] + 45 * PRICE['input']:.9f}"},
    ):
        raw = await clients["A"].chat.completions.with_raw_response.create(
            model=MODEL,
            messages=LONG,  # type: ignore[arg-type]
            max_tokens=400,
            temperature=0.8,
            extra_body=RUN_ON,
            extra_headers={"X-TTC-Strategy": "majority_vote", "X-TTC-K": "4", **strategy_headers},
        )
        body = json.loads(raw.content)
        assert raw.headers["X-TTC-Truncated"] == "true", strategy_headers
        assert body["usage"]["prompt_tokens"] > 0
        ledger.aborted_sequences += body["ttc"]["samples"]["aborted"]
        ledger.answer("A", body["usage"], body["ttc"]["cost"]["price_table_usd"])
        expected["200"] += 1
    # a deadline that cuts a single: 504, the generated tokens still billed
    await client_error(
        504,
        client=faults,
        messages=LONG,
        max_tokens=400,
        extra_body=RUN_ON,
        extra_headers={"X-TTC-Deadline-Ms": "700"},
    )
    ledger.aborted_sequences += 1
    # clients that leave: a stream, a vote, a single
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        auth = {"Authorization": f"Bearer {FAULTS_KEY}"}
        for headers, stream, wait in (
            ({}, True, 0.6),
            ({"X-TTC-Strategy": "majority_vote", "X-TTC-K": "3"}, False, 0.8),
            ({"X-TTC-Strategy": "first_finish", "X-TTC-K": "3"}, True, 0.5),
        ):
            body = {"model": MODEL, "messages": LONG, "max_tokens": 400, "stream": stream, **RUN_ON}

            async def send(body: dict[str, Any] = body, headers: dict[str, str] = headers) -> None:
                if body["stream"]:
                    async with http.stream(
                        "POST", "/v1/chat/completions", json=body, headers={**auth, **headers}
                    ) as response:
                        async for _ in response.aiter_raw():
                            pass
                else:
                    await http.post("/v1/chat/completions", json=body, headers={**auth, **headers})

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(send(), wait)
            expected["499"] += 1
            ledger.aborted_sequences += int(headers.get("X-TTC-K", 1))
            await asyncio.sleep(0.3)
    engines.idle()
    await asyncio.sleep(1.5)  # the gateway has counted and settled the ones that left
    engine_before_kill = engines.read()
    prometheus.settle()
    gateway_tokens_before_kill = prometheus.tokens()

    # a worker killed mid-stream: the client gets an error event; a 502
    stream = await faults.chat.completions.create(
        model=MODEL,
        messages=LONG,  # type: ignore[arg-type]
        max_tokens=400,
        stream=True,
        extra_body=RUN_ON,
    )
    received = 0
    with pytest.raises(openai.APIError):
        async for _ in stream:
            received += 1
            if received == 5:
                busy = _busy_worker(workers)
                stop_process(busy, signal.SIGKILL)
    expected["502"] += 1
    prometheus.settle()
    faulty_counts = expected - before
    five_xx = sum(n for status, n in faulty_counts.items() if status.startswith("5"))
    faulty = {
        "expected_ratio": five_xx / sum(faulty_counts.values()),
        "error_ratio": prometheus.ratio_over(error_ratio_query(), start_faulty),
    }
    for client in (*clients.values(), faults, empty):
        await client.close()
    return {
        "clean": clean,
        "faulty": faulty,
        "end": (expected, prometheus.statuses()),
        "ledger": ledger,
        "engine_before_kill": engine_before_kill,
        "gateway_tokens_before_kill": gateway_tokens_before_kill,
        "prometheus_cost_end": prometheus.cost(),
        "aborted_sequences": ledger.aborted_sequences,
    }


def _busy_worker(workers: list[tuple[str, subprocess.Popen[bytes]]]) -> subprocess.Popen[bytes]:
    for url, process in workers:
        for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
            if line.startswith("llamacpp:requests_processing") and float(line.split()[-1]) > 0:
                return process
    raise AssertionError("no worker is processing the stream")
