"""Dollars and joules per request: a price book, and interval attribution of worker energy.

Two cost bases, kept apart by the ``basis`` label:

- ``price_table``: per-token prices by model from the price book (``metering.prices_file``;
  default ``gateway/defaults/prices.yaml``; LiteLLM field names) applied to each upstream
  call's usage: ``(prompt - cached)·input_cost_per_token +
  cached·cache_read_input_token_cost + completion·output_cost_per_token``. Exact at answer time.
- ``infrastructure``: each worker's ``usd_per_hour``, split like its energy (below).

Energy (interval attribution, by token work): every ``interval_s`` the meter reads each
worker's energy source and closes an interval. Work done on the worker in the interval is
``completion tokens + prompt_token_weight · uncached prompt tokens``, pulled from the live
streams' tallies (a stream's remaining work is booked when its usage arrives). Then::

    idle    = min(ΔE, idle_watts · Δt)       if any work was done, else ΔE (all of it is idle)
    share_r = (ΔE - idle) · work_r / Σ work   # sums exactly to ΔE - idle
    cost_r  = usd_per_hour · Δt / 3600 · work_r / Σ work   # no work: the hour is unattributed

``idle_watts`` is configured per worker or learned (an average of ΔE/Δt over intervals in
which the worker had nothing in flight). A request's answer carries what has been attributed
to it so far plus, for work in the still-open interval, that work times the worker's last
joules (and dollars) per unit of work: ``ttc.energy.provisional_joules``. Metrics get only
attributed values, when each interval closes, so they add up to the measured total.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any, Protocol

import aiohttp
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.config import ConfigError, MeteringConfig, WorkerConfig, format_validation_error
from gateway.metering.energy import (
    BusyClock,
    EnergyCounter,
    EnergySource,
    EnergySourceError,
    open_source,
)
from gateway.metrics import GatewayMetrics, multiprocess_dir
from gateway.openai.chunks import StreamTally, Usage
from strategies import REGISTRY

log = logging.getLogger("ttc.metering")

IDLE_POWER_SMOOTHING = 0.2  # weight of the newest idle interval in the learned idle power


# -- price table ----------------------------------------------------------------------------------
class ModelPrice(BaseModel):
    """USD per token, LiteLLM's ``model_prices_and_context_window.json`` field names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_cost_per_token: float = Field(0.0, ge=0)
    cache_read_input_token_cost: float | None = Field(
        None, ge=0, description="Cached prompt tokens; default: the input price"
    )
    output_cost_per_token: float = Field(0.0, ge=0)

    def cost(self, usage: Usage) -> float:
        cached = min(usage.cached_tokens or 0, usage.prompt_tokens)
        cache_price = (
            self.cache_read_input_token_cost
            if self.cache_read_input_token_cost is not None
            else self.input_cost_per_token
        )
        return (
            (usage.prompt_tokens - cached) * self.input_cost_per_token
            + cached * cache_price
            + usage.completion_tokens * self.output_cost_per_token
        )


class PriceBook(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = "none"
    models: dict[str, ModelPrice] = Field(default_factory=dict)

    def cost(self, model: str, usage: Usage) -> float:
        price = self.models.get(model)
        return price.cost(usage) if price is not None else 0.0


def load_price_book(path: str | None) -> PriceBook:
    """The price book at ``path``, or the packaged one (``gateway/defaults/prices.yaml``) when
    none is configured. A configured file that cannot be read is a configuration error."""
    if path is None:
        text = resources.files("gateway.defaults").joinpath("prices.yaml").read_text()
        where = "the packaged price book"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"metering.prices_file: cannot read {path}: {exc}") from exc
        where = path
    try:
        data = yaml.safe_load(text) or {}
        return PriceBook(**data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"metering.prices_file: {where} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"{where}: {format_validation_error(exc)}") from None
    except TypeError as exc:
        raise ConfigError(f"{where}: the top level must be a mapping ({exc})") from None


def warn_unpriced(prices: PriceBook, models: list[str], source: str | None) -> None:
    """One start-up WARNING naming the served models the price book has no price for (their
    price-table cost is 0, and budgets cannot stop them)."""
    missing = [m for m in models if m not in prices.models]
    if missing:
        log.warning(
            "no price for %s in %s: their price-table cost is 0 and USD budgets and "
            "X-TTC-Max-Cost-USD do not limit them (metering.prices_file)",
            ", ".join(repr(m) for m in missing),
            source or "the packaged price book",
        )


# -- interval attribution -------------------------------------------------------------------------
@dataclass
class IntervalSplit:
    shares: dict[RequestMeter, float]
    idle: float


def split_interval(
    delta: float, dt: float, idle_watts: float, work: dict[RequestMeter, float]
) -> IntervalSplit:
    """Split ``delta`` (joules, or dollars with ``idle_watts=0``) among the requests by work;
    what no request caused is idle. The shares and the idle part add up to ``delta``."""
    total = sum(work.values())
    if total <= 0:
        return IntervalSplit({}, delta)
    idle = min(delta, idle_watts * dt)
    dynamic = delta - idle
    return IntervalSplit({r: dynamic * w / total for r, w in work.items()}, idle)


# -- per request ----------------------------------------------------------------------------------
@dataclass(eq=False)
class RequestMeter:
    """What one client request has cost so far; shared by all its upstream calls."""

    model: str
    strategy: str
    price_usd: float = 0.0
    tokens: int = 0  # prompt + completion tokens of all its calls (for tokens/minute limits)
    infrastructure_usd: float = 0.0
    energy_joules: float = 0.0
    energy_methods: set[str] = field(default_factory=set)
    open_work: dict[str, float] = field(default_factory=dict)  # worker -> not yet attributed

    def report(self, meter: Meter | None) -> dict[str, Any]:
        """The ``ttc.cost`` / ``ttc.energy`` figures for the answer."""
        provisional_j = provisional_usd = 0.0
        methods = set(self.energy_methods)
        if meter is not None:
            for worker, work in self.open_work.items():
                rate = meter.rates.get(worker)
                if rate is not None:
                    provisional_j += work * rate[0]
                    provisional_usd += work * rate[1]
                method = meter.energy_method(worker)
                if work and method is not None:
                    methods.add(method)
        named = sorted(methods)
        return {
            "cost_usd": self.price_usd + self.infrastructure_usd + provisional_usd,
            "cost": {
                "price_table_usd": self.price_usd,
                "infrastructure_usd": self.infrastructure_usd + provisional_usd,
            },
            "energy_joules": self.energy_joules + provisional_j,
            "energy": {
                "attributed_joules": self.energy_joules,
                "provisional_joules": provisional_j,
                "method": named[0] if len(named) == 1 else ("mixed" if named else "none"),
            },
        }


class Worker(Protocol):
    """What the meter reads of a worker (``gateway.upstream.pool.Worker`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def config(self) -> WorkerConfig: ...
    @property
    def busy(self) -> BusyClock: ...
    @property
    def in_flight(self) -> int: ...


@dataclass(eq=False)
class _Watched:
    request: RequestMeter
    tally: StreamTally | None
    booked: float = 0.0


@dataclass(eq=False)
class _WorkerMeter:
    worker: Worker
    pool: str
    source: EnergySource | None
    counter: EnergyCounter | None
    idle_watts: float | None  # configured
    learned_idle_watts: float | None = None
    last_read: float = field(default_factory=time.monotonic)
    watched: set[_Watched] = field(default_factory=set)
    work: dict[RequestMeter, float] = field(default_factory=dict)
    closing: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def idle_power(self) -> float:
        if self.idle_watts is not None:
            return self.idle_watts
        return self.learned_idle_watts or 0.0


class Meter:
    """Reads every worker's energy each interval and attributes it (and machine cost)."""

    def __init__(
        self,
        config: MeteringConfig,
        prices: PriceBook,
        models: list[str],
        metrics: GatewayMetrics,
    ) -> None:
        self.config = config
        self.prices = prices
        self.metrics = metrics
        self.rates: dict[str, tuple[float, float]] = {}  # worker -> (J, USD) per unit of work
        self.measures = True  # reads energy counters, closes intervals
        self.attributes = True  # splits them among requests (one process serving)
        self._lock: IO[str] | None = None
        self._workers: dict[str, _WorkerMeter] = {}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        metrics.price_table_info.labels(prices.version).set(1)
        # Series that exist from the start (at 0): rate() then sees a request's whole cost,
        # not only what came after the series' first scrape.
        for model in models:
            for strategy in REGISTRY:
                for basis in ("price_table", "infrastructure"):
                    metrics.cost.labels(basis, model, strategy)

    # -- life cycle -------------------------------------------------------------------------
    def _share_with_other_processes(self) -> None:
        """With ``server.workers`` > 1 each process sees only its own requests, so none can
        split a worker's energy among all of them: one process (the first to lock the
        metrics folder's ``metering.lock``) reads the energy counters and exports the measured
        totals and the machine cost, unsplit; no process attributes."""
        path = multiprocess_dir()
        if path is None:
            return
        self.attributes = False
        lock = open(os.path.join(path, "metering.lock"), "w")  # noqa: SIM115 (held for life)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            self.measures = False
            return
        self._lock = lock
        log.warning(
            "server.workers > 1: energy and machine cost are measured per worker "
            "(ttc_energy_joules_total, ttc_cost_unattributed_usd_total) but not split among "
            "requests, and estimate sources are not read; answers report energy method "
            "'none'. Run one process per replica for per-request joules."
        )

    async def start(self) -> None:
        self._share_with_other_processes()
        if not self.measures:
            return
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._loop(), name="metering")

    def add_worker(self, pool: str, worker: Worker) -> None:
        """Meter ``worker`` of ``pool`` from now on (after ``start``; nothing when this
        process does not measure)."""
        if self._session is None:
            return
        source: EnergySource | None = None
        energy = worker.config.energy
        if energy is not None and energy.source == "estimate" and not self.attributes:
            energy = None  # busy time seen by one of several processes is not the worker's
        if energy is not None:
            try:
                source = open_source(energy, self._session, worker.busy.seconds)
            except EnergySourceError as exc:
                log.error("worker %s: energy is not metered: %s", worker.name, exc)
        if source is not None:
            self.metrics.energy_source_info.labels(worker.name, source.name, source.method).set(1)
        self._workers[worker.name] = _WorkerMeter(
            worker,
            pool,
            source,
            EnergyCounter(source.max_range_j) if source is not None else None,
            worker.config.idle_watts,
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.measures:
            await self.tick()  # attribute the last partial interval
        if self._session is not None:
            await self._session.close()
        if self._lock is not None:
            self._lock.close()

    async def _loop(self) -> None:
        await self.tick()  # the first reading sets each counter's origin
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                await self.tick()
            except Exception:  # a bug here must not stop metering
                log.exception("metering tick failed")

    def energy_method(self, worker: str) -> str | None:
        state = self._workers.get(worker)
        return state.source.method if state is not None and state.source is not None else None

    # -- requests ---------------------------------------------------------------------------
    async def report(self, request: RequestMeter) -> dict[str, Any]:
        """``request``'s cost and energy figures for its answer. A worker that has no joules
        per unit of work yet (no interval closed with work on it: the first requests after
        start) closes one now, so the first answer is valued like the next ones."""
        unvalued = [
            self._workers[name]
            for name, work in request.open_work.items()
            if work and name not in self.rates and name in self._workers
        ]
        if unvalued:
            await asyncio.gather(*(self._value(state) for state in unvalued))
        return request.report(self)

    async def _value(self, state: _WorkerMeter) -> None:
        async with state.closing:  # concurrent first answers close one interval, not several
            if state.worker.name not in self.rates:
                await self._close_interval_now(state)

    def request(self, model: str, strategy: str) -> RequestMeter:
        return RequestMeter(model, strategy)

    def watch(self, request: RequestMeter, worker: Worker, tally: StreamTally | None) -> object:
        """Follow a live stream's tokens; return the handle to pass to ``settle``."""
        watched = _Watched(request, tally)
        state = self._workers.get(worker.name)
        if state is not None:
            state.watched.add(watched)
        return watched

    def settle(
        self,
        request: RequestMeter,
        worker: Worker,
        model: str,
        usage: Usage,
        handle: object | None = None,
    ) -> None:
        """A call to ``worker`` ended with ``usage``: price it and book the work that was not
        pulled from its stream yet (all of it for a call that was not watched)."""
        cost = self.prices.cost(model, usage)
        request.price_usd += cost
        request.tokens += usage.prompt_tokens + usage.completion_tokens
        self.metrics.cost.labels("price_table", model, request.strategy).inc(cost)
        state = self._workers.get(worker.name)
        if state is None:
            return
        if not isinstance(handle, _Watched):
            handle = _Watched(request, None)
        state.watched.discard(handle)
        uncached = usage.prompt_tokens - min(usage.cached_tokens or 0, usage.prompt_tokens)
        work = usage.completion_tokens + self.config.prompt_token_weight * uncached
        self._book(state, request, max(0.0, work - handle.booked))
        handle.booked = max(handle.booked, work)

    def _book(self, state: _WorkerMeter, request: RequestMeter, work: float) -> None:
        if work > 0 and self.attributes:
            state.work[request] = state.work.get(request, 0.0) + work
            request.open_work[state.worker.name] = (
                request.open_work.get(state.worker.name, 0.0) + work
            )

    # -- intervals --------------------------------------------------------------------------
    async def tick(self) -> None:
        await asyncio.gather(*(self._close_interval(s) for s in list(self._workers.values())))

    async def _close_interval(self, state: _WorkerMeter) -> None:
        async with state.closing:  # the loop's tick and an answer's report may race
            await self._close_interval_now(state)

    async def _close_interval_now(self, state: _WorkerMeter) -> None:
        for watched in list(state.watched):  # tokens received since the last tick
            if watched.tally is not None:
                now_work = float(watched.tally.counted_completion_tokens)
                self._book(state, watched.request, now_work - watched.booked)
                watched.booked = max(watched.booked, now_work)
        delta_j: float | None = None
        if state.source is not None and state.counter is not None:
            try:
                delta_j = state.counter.advance(await state.source.read())
            except EnergySourceError as exc:
                log.warning("worker %s: energy reading failed: %s", state.worker.name, exc)
                return  # the interval runs on to the next good reading; work keeps piling up
        now = time.monotonic()
        dt, state.last_read = now - state.last_read, now
        work, state.work = state.work, {}
        name = state.worker.name
        if not self.attributes:  # one of several processes: the totals, unsplit
            self.metrics.cost_unattributed.labels(name).inc(
                state.worker.config.usd_per_hour * dt / 3600
            )
            if delta_j is not None and state.source is not None:
                self.metrics.energy.labels(state.pool, name, state.source.method).inc(delta_j)
            return
        cost = split_interval(state.worker.config.usd_per_hour * dt / 3600, dt, 0.0, work)
        for request, usd in cost.shares.items():
            request.infrastructure_usd += usd
            self.metrics.cost.labels("infrastructure", request.model, request.strategy).inc(usd)
        self.metrics.cost_unattributed.labels(name).inc(cost.idle)
        total_work = sum(work.values())
        usd_rate = (sum(cost.shares.values()) / total_work) if total_work else None
        j_rate: float | None = None
        if delta_j is not None and state.source is not None:
            method = state.source.method
            energy = split_interval(delta_j, dt, state.idle_power, work)
            self.metrics.energy.labels(state.pool, name, method).inc(delta_j)
            self.metrics.energy_idle.labels(name, method).inc(energy.idle)
            for request, joules in energy.shares.items():
                request.energy_joules += joules
                request.energy_methods.add(method)
                self.metrics.energy_attributed.labels(request.model, request.strategy, method).inc(
                    joules
                )
            if total_work:
                j_rate = sum(energy.shares.values()) / total_work
            elif state.worker.in_flight == 0 and dt > 0:
                self._learn_idle_power(state, delta_j / dt)
        for request, w in work.items():
            left = request.open_work.get(name, 0.0) - w
            request.open_work[name] = max(0.0, left)
        if usd_rate is not None or j_rate is not None:
            self.rates[name] = (j_rate or 0.0, usd_rate or 0.0)

    @staticmethod
    def _learn_idle_power(state: _WorkerMeter, watts: float) -> None:
        previous = state.learned_idle_watts
        state.learned_idle_watts = (
            watts
            if previous is None
            else (1 - IDLE_POWER_SMOOTHING) * previous + IDLE_POWER_SMOOTHING * watts
        )
