"""Cost and energy arithmetic against hand-computed cases (gateway/metering/meter.py, energy.py)."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.config import (
    ConfigError,
    DcgmEnergy,
    EstimatedEnergy,
    HealthCheckConfig,
    MeteringConfig,
    NvmlEnergy,
    PoolConfig,
    RaplEnergy,
    WorkerConfig,
    ZeusdEnergy,
    load_settings,
)
from gateway.metering.energy import (
    BusyClock,
    DcgmSource,
    EnergyCounter,
    EnergySource,
    EnergySourceError,
    NvmlSource,
    RaplSource,
    ZeusdSource,
)
from gateway.metering.meter import (
    Meter,
    ModelPrice,
    PriceBook,
    RequestMeter,
    load_price_book,
    split_interval,
    warn_unpriced,
)
from gateway.metrics import GatewayMetrics
from gateway.openai.chunks import Usage
from gateway.upstream.pool import WorkerPool


# -- price table ------------------------------------------------------------------------------
def test_price_table_cost_by_hand() -> None:
    price = ModelPrice(
        input_cost_per_token=2e-6, cache_read_input_token_cost=5e-7, output_cost_per_token=8e-6
    )
    usage = Usage(prompt_tokens=1000, completion_tokens=250, cached_tokens=600)
    # 400 uncached x 2e-6 + 600 cached x 5e-7 + 250 x 8e-6 = 0.0008 + 0.0003 + 0.002
    assert math.isclose(price.cost(usage), 0.0031)
    no_cache_price = ModelPrice(input_cost_per_token=2e-6, output_cost_per_token=8e-6)
    assert math.isclose(no_cache_price.cost(usage), 1000 * 2e-6 + 250 * 8e-6)
    book = PriceBook(models={"m": price})
    assert book.cost("unknown", usage) == 0.0


def test_the_shipped_price_book_loads_and_a_bad_one_names_its_key(tmp_path: Path) -> None:
    book = load_price_book(None)  # the packaged price book
    assert "smollm2-135m-instruct" in book.models and book.version != "none"
    bad = tmp_path / "prices.yaml"
    bad.write_text("models:\n  m:\n    output_cost_per_tokens: 1\n")
    with pytest.raises(Exception, match=r"models\.m\.output_cost_per_tokens"):
        load_price_book(str(bad))


# -- counters ---------------------------------------------------------------------------------
def test_counter_wraps_around_at_its_range_and_treats_an_unexplained_drop_as_a_reset() -> None:
    rapl = EnergyCounter(max_range_j=100.0)
    assert rapl.advance(90.0) == 0.0  # the first reading is the origin
    assert rapl.advance(95.0) == 5.0
    assert rapl.advance(10.0) == 15.0  # 95 -> 100 (wrap) -> 10
    nvml = EnergyCounter(max_range_j=None)
    nvml.advance(5000.0)
    assert nvml.advance(12.0) == 0.0  # driver reload: unknown, never negative
    assert nvml.advance(20.0) == 8.0


# -- attribution ------------------------------------------------------------------------------
def _requests(n: int) -> list[RequestMeter]:
    return [RequestMeter(model="m", strategy="s") for _ in range(n)]


def test_an_idle_interval_goes_entirely_to_idle() -> None:
    split = split_interval(delta=42.0, dt=1.0, idle_watts=30.0, work={})
    assert split.shares == {} and split.idle == 42.0


def test_concurrent_requests_share_the_dynamic_energy_by_token_work() -> None:
    a, b, c = _requests(3)
    split = split_interval(delta=120.0, dt=1.0, idle_watts=30.0, work={a: 10, b: 20, c: 30})
    assert split.idle == 30.0  # 30 W x 1 s
    assert split.shares == {a: 15.0, b: 30.0, c: 45.0}  # 90 J split 1:2:3
    assert math.isclose(sum(split.shares.values()) + split.idle, 120.0)


def test_idle_power_above_the_measured_energy_is_clipped() -> None:
    (a,) = _requests(1)
    split = split_interval(delta=10.0, dt=1.0, idle_watts=30.0, work={a: 5})
    assert split.idle == 10.0 and split.shares == {a: 0.0}


class ScriptedSource(EnergySource):
    name = "scripted"

    def __init__(self, readings: list[float], max_range_j: float | None = None) -> None:
        self.readings = readings
        self.max_range_j = max_range_j

    async def read(self) -> float:
        return self.readings.pop(0)


async def _meter(
    *workers: WorkerConfig, prices: PriceBook | None = None
) -> tuple[Meter, GatewayMetrics, WorkerPool]:
    metrics = GatewayMetrics()
    pool = WorkerPool(
        PoolConfig(name="p", engine="vllm", model="m", workers=list(workers)),
        HealthCheckConfig(),
        metrics,
    )
    meter = Meter(
        MeteringConfig(prompt_token_weight=0.5),
        prices or PriceBook(),
        [pool.model],
        metrics,
    )
    await meter.start()
    for worker in pool.workers:
        meter.add_worker(pool.name, worker)
    assert meter._task is not None
    meter._task.cancel()  # the test drives the intervals itself
    return meter, metrics, pool


def _value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_meter_splits_measured_energy_and_cost_among_concurrent_requests() -> None:
    worker = WorkerConfig(
        url="http://w:1",
        energy=EstimatedEnergy(source="estimate", watts=1),
        idle_watts=10.0,
        usd_per_hour=36.0,  # 0.01 $/s
    )
    meter, metrics, pool = await _meter(
        worker, prices=PriceBook(models={"m": ModelPrice(output_cost_per_token=1e-3)})
    )
    state = next(iter(meter._workers.values()))
    # a wrapping counter: 1000 J range; origin 990, then 990 -> 60 (+70 J)
    state.source = ScriptedSource([990.0, 60.0, 100.0, 100.0], max_range_j=1000.0)
    state.counter = EnergyCounter(1000.0)
    w = pool.workers[0]
    await meter.tick()  # origin
    one, two = meter.request("m", "majority_vote"), meter.request("m", "single")
    tally_one, tally_two = (
        SimpleNamespace(counted_completion_tokens=0),
        SimpleNamespace(counted_completion_tokens=0),
    )
    h1 = meter.watch(one, w, tally_one)  # type: ignore[arg-type]
    h2 = meter.watch(two, w, tally_two)  # type: ignore[arg-type]
    tally_one.counted_completion_tokens, tally_two.counted_completion_tokens = 30, 10
    state.last_read -= 1.0  # a 1 s interval (and a bit)
    await meter.tick()  # ΔE 70 J: idle 10 W x ~1 s, the rest 3:1
    interval_1 = 70.0
    assert math.isclose(one.energy_joules, 3 * two.energy_joules, rel_tol=1e-9)
    idle_1 = interval_1 - one.energy_joules - two.energy_joules
    assert 10.0 <= idle_1 < 10.5
    # request two ends: 4 prompt tokens (weight 0.5) and 12 completion tokens in all
    meter.settle(two, w, "m", Usage(prompt_tokens=4, completion_tokens=12), h2)
    meter.settle(one, w, "m", Usage(prompt_tokens=0, completion_tokens=30), h1)
    state.last_read -= 1.0
    await meter.tick()  # ΔE 40 J; work: two 2 + 2 = 4, one 0 -> all dynamic energy to two
    measured = interval_1 + 40.0
    assert (
        _value(metrics, "ttc_energy_joules_total", pool="p", worker="p-0", method="measured")
        == measured
    )
    attributed = _value(
        metrics,
        "ttc_energy_attributed_joules_total",
        model="m",
        strategy="majority_vote",
        method="measured",
    ) + _value(
        metrics,
        "ttc_energy_attributed_joules_total",
        model="m",
        strategy="single",
        method="measured",
    )
    idle = _value(metrics, "ttc_energy_idle_joules_total", worker="p-0", method="measured")
    assert math.isclose(attributed + idle, measured)  # the shares add up to the measured total
    assert math.isclose(attributed, one.energy_joules + two.energy_joules)
    # price table: 30 and 12 completion tokens at 1e-3
    assert math.isclose(one.price_usd, 0.030) and math.isclose(two.price_usd, 0.012)
    # infrastructure: every second of a busy worker is charged, split like the work
    infra = one.infrastructure_usd + two.infrastructure_usd
    unattributed = _value(metrics, "ttc_cost_unattributed_usd_total", worker="p-0")
    assert infra > 0.02 and unattributed < 1e-4  # only the instant before the origin reading
    report = two.report(meter)
    assert report["energy"]["method"] == "measured" and report["energy"]["provisional_joules"] == 0
    assert math.isclose(report["cost_usd"], two.price_usd + two.infrastructure_usd)
    await meter.close()


async def test_work_in_the_open_interval_is_reported_provisionally() -> None:
    worker = WorkerConfig(url="http://w:1", energy=EstimatedEnergy(source="estimate", watts=1))
    meter, _, pool = await _meter(worker)
    state = next(iter(meter._workers.values()))
    state.source = ScriptedSource([0.0, 50.0])
    w = pool.workers[0]
    await meter.tick()
    first = meter.request("m", "single")
    meter.settle(first, w, "m", Usage(completion_tokens=10))
    await meter.tick()  # 50 J for 10 tokens: 5 J per unit of work
    second = meter.request("m", "single")
    meter.settle(second, w, "m", Usage(completion_tokens=4))
    report = second.report(meter)
    assert report["energy"]["attributed_joules"] == 0.0
    assert math.isclose(report["energy_joules"], 20.0)  # 4 x 5 J, until its interval closes
    meter._workers.clear()  # nothing left to read at close
    await meter.close()


def test_busy_clock_counts_time_with_requests_in_flight() -> None:
    now = [0.0]
    clock = BusyClock(lambda: now[0])
    clock.started()
    now[0] = 2.0
    clock.started()  # a second request overlapping: still one busy period
    now[0] = 3.0
    clock.ended()
    clock.ended()
    now[0] = 10.0  # idle
    clock.started()
    now[0] = 10.5
    assert clock.seconds() == 3.5


# -- sources ----------------------------------------------------------------------------------
async def test_rapl_reads_microjoules_and_knows_its_wrap_range(tmp_path: Path) -> None:
    (tmp_path / "energy_uj").write_text("262143000000\n")
    (tmp_path / "max_energy_range_uj").write_text("262143328850\n")
    source = RaplSource(RaplEnergy(source="rapl", zone=str(tmp_path)))
    assert source.max_range_j == 262143.32885
    assert await source.read() == 262143.0
    with pytest.raises(EnergySourceError, match="root-only"):
        RaplSource(RaplEnergy(source="rapl", zone=str(tmp_path / "absent")))


class FakeNvml:
    def __init__(self) -> None:
        self.mj = {0: 1_000, 1: 2_500}

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        return self.mj[handle]


async def test_nvml_sums_the_workers_gpus_in_joules() -> None:
    source = NvmlSource(NvmlEnergy(source="nvml", gpus=[0, 1]), nvml=FakeNvml())
    assert await source.read() == 3.5


# A dcgm-exporter page in its own shape (labels as in its default-counters.csv setup).
DCGM_PAGE = (Path(__file__).parent / "dcgm_exporter_metrics.txt").read_text()


@pytest.fixture
async def energy_endpoints() -> AsyncIterator[str]:
    async def dcgm(_: web.Request) -> web.Response:
        return web.Response(text=DCGM_PAGE)

    async def zeusd(request: web.Request) -> web.Response:
        assert request.query["gpu_ids"] == "0,1"
        return web.json_response({"0": {"energy_mj": 1500}, "1": {"energy_mj": 500}})

    app = web.Application()
    app.router.add_get("/metrics", dcgm)
    app.router.add_get("/gpu/get_cumulative_energy", zeusd)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_dcgm_and_zeusd_sources_read_millijoules(energy_endpoints: str) -> None:
    async with aiohttp.ClientSession() as session:
        dcgm = DcgmSource(
            DcgmEnergy(source="dcgm", url=energy_endpoints + "/metrics", gpus=["1"]), session
        )
        assert await dcgm.read() == 7.0
        every_gpu = DcgmSource(
            DcgmEnergy(source="dcgm", url=energy_endpoints + "/metrics"), session
        )
        assert await every_gpu.read() == 12.0
        absent = DcgmSource(
            DcgmEnergy(source="dcgm", url=energy_endpoints + "/metrics", gpus=["7"]), session
        )
        with pytest.raises(EnergySourceError, match="no DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"):
            await absent.read()
        zeusd = ZeusdSource(ZeusdEnergy(source="zeusd", url=energy_endpoints, gpus=[0, 1]), session)
        assert await zeusd.read() == 2.0


def test_energy_configuration_names_a_bad_source(tmp_path: Path) -> None:
    settings: dict[str, Any] = {
        "pools": [
            {
                "name": "p",
                "engine": "vllm",
                "model": "m",
                "workers": [{"url": "http://w:1", "energy": {"source": "thermometer"}}],
            }
        ]
    }
    path = tmp_path / "bad-energy.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError, match=r"pools\.0\.workers\.0\.energy"):
        load_settings(path)


def test_a_relative_prices_file_is_found_next_to_its_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started from another directory, the price book a configuration names relative to itself
    is still found (it was read relative to the working directory: every cost was 0)."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "my-prices.yaml").write_text(
        "models:\n  m:\n    output_cost_per_token: 0.5\n"
    )
    config = tmp_path / "etc" / "gateway.yaml"
    config.write_text("metering:\n  prices_file: my-prices.yaml\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(config)
    assert settings.metering.prices_file == str(tmp_path / "etc" / "my-prices.yaml")
    book = load_price_book(settings.metering.prices_file)
    assert book.cost("m", Usage(completion_tokens=4)) == 2.0
    # A configured file that is not there stops the start instead of costing 0.
    config.write_text("metering:\n  prices_file: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"metering.prices_file: cannot read .*missing.yaml"):
        load_price_book(load_settings(config).metering.prices_file)


def test_a_served_model_without_a_price_is_a_start_up_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="ttc.metering"):
        warn_unpriced(load_price_book(None), ["smollm2-135m-instruct", "my-model"], None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'my-model'" in warnings[0]
    assert "smollm2" not in warnings[0]
