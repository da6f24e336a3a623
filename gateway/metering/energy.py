"""Energy sources: one interface over NVML, a DCGM exporter, zeusd, Linux RAPL and an estimate.

Every source reports a cumulative energy in joules (``read()``); ``EnergyCounter`` turns
successive readings into non-negative deltas, handling wrap-around (RAPL's ``energy_uj`` wraps at
``max_energy_range_uj``) and resets (NVML restarts at driver reload; a decrease with no known
range is counted as 0, never as negative energy). Sources are read about once a second by the
meter (``gateway.metering.meter``); blocking reads (NVML, sysfs) run in a thread.

``method`` tells a measured counter from an estimate; an estimate is always labelled one, in
metrics and in each response's ``ttc.energy``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import (
    DcgmEnergy,
    EnergyConfig,
    EstimatedEnergy,
    NvmlEnergy,
    RaplEnergy,
    ZeusdEnergy,
)

Method = Literal["measured", "estimated"]
DCGM_ENERGY_METRIC = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"  # counter, mJ since boot
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


class EnergySourceError(Exception):
    """A reading failed; the interval is extended to the next good one."""


class EnergySource:
    """Base of the sources: ``read()`` gives the cumulative energy in joules (raw: it may
    wrap at ``max_range_j`` or reset)."""

    name: str = "?"  # nvml, dcgm, zeusd, rapl, estimate
    method: Method = "measured"
    max_range_j: float | None = None

    async def read(self) -> float:
        raise NotImplementedError


class EnergyCounter:
    """Deltas of a cumulative reading that may wrap (at ``max_range_j``) or reset."""

    def __init__(self, max_range_j: float | None) -> None:
        self.max_range_j = max_range_j
        self.last: float | None = None

    def advance(self, reading: float) -> float:
        """Joules since the previous reading (0 for the first one)."""
        previous, self.last = self.last, reading
        if previous is None:
            return 0.0
        if reading >= previous:
            return reading - previous
        if self.max_range_j is not None:  # wrapped once (read faster than it can wrap twice)
            return reading + self.max_range_j - previous
        return 0.0  # a reset (driver reload, reboot): the energy in between is unknown


class NvmlSource(EnergySource):
    """``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded), summed over GPUs."""

    name = "nvml"

    def __init__(self, config: NvmlEnergy, nvml: Any = None) -> None:
        if nvml is None:
            try:
                import pynvml  # type: ignore[import-not-found]  # nvidia-ml-py
            except ImportError as exc:
                raise EnergySourceError(
                    "energy source nvml needs nvidia-ml-py (pip install nvidia-ml-py)"
                ) from exc
            nvml = pynvml
        self._nvml = nvml
        self._nvml.nvmlInit()
        self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in config.gpus]

    def _read_mj(self) -> int:
        return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles)

    async def read(self) -> float:
        try:
            return await asyncio.to_thread(self._read_mj) / 1000.0
        except Exception as exc:  # NVMLError and friends
            raise EnergySourceError(f"nvml: {exc}") from exc


class DcgmSource(EnergySource):
    """The DCGM exporter's total-energy counter (mJ), summed over the worker's GPUs."""

    name = "dcgm"

    def __init__(self, config: DcgmEnergy, session: aiohttp.ClientSession) -> None:
        self.url = config.url
        self.gpus = set(config.gpus) if config.gpus is not None else None
        self._session = session

    async def read(self) -> float:
        text = await _get_text(self._session, self.url)
        total_mj, seen = 0.0, False
        for family in text_string_to_metric_families(text):
            if family.name != DCGM_ENERGY_METRIC:
                continue
            for sample in family.samples:
                if self.gpus is None or sample.labels.get("gpu") in self.gpus:
                    total_mj += sample.value
                    seen = True
        if not seen:
            raise EnergySourceError(
                f"dcgm: no {DCGM_ENERGY_METRIC} for gpus {self.gpus} at {self.url}"
            )
        return total_mj / 1000.0


class ZeusdSource(EnergySource):
    """zeusd's ``GET /gpu/get_cumulative_energy?gpu_ids=…`` → ``{"0": {"energy_mj": …}}``."""

    name = "zeusd"

    def __init__(self, config: ZeusdEnergy, session: aiohttp.ClientSession) -> None:
        ids = ",".join(str(g) for g in config.gpus)
        self.url = f"{config.url.rstrip('/')}/gpu/get_cumulative_energy?gpu_ids={ids}"
        self.gpus = [str(g) for g in config.gpus]
        self._session = session

    async def read(self) -> float:
        text = await _get_text(self._session, self.url)
        try:
            data = json.loads(text)
            return sum(float(data[g]["energy_mj"]) for g in self.gpus) / 1000.0
        except (KeyError, TypeError, ValueError) as exc:
            raise EnergySourceError(f"zeusd: {exc!r} from {self.url}") from exc


class RaplSource(EnergySource):
    """A RAPL zone's ``energy_uj``; wraps at ``max_energy_range_uj``."""

    name = "rapl"

    def __init__(self, config: RaplEnergy) -> None:
        self.zone = Path(config.zone)
        try:
            self.max_range_j = int((self.zone / "max_energy_range_uj").read_text()) / 1e6
            self._read_j()
        except (OSError, ValueError) as exc:
            raise EnergySourceError(
                f"rapl: cannot read {self.zone} ({exc}); it is root-only since Linux 5.10 and "
                "masked in most containers"
            ) from exc

    def _read_j(self) -> float:
        return int((self.zone / "energy_uj").read_text()) / 1e6

    async def read(self) -> float:
        try:
            return await asyncio.to_thread(self._read_j)
        except (OSError, ValueError) as exc:
            raise EnergySourceError(f"rapl: {exc}") from exc


class EstimatedSource(EnergySource):
    """No counter: configured watts x the seconds the worker had requests in flight."""

    name = "estimate"
    method: Method = "estimated"

    def __init__(self, config: EstimatedEnergy, busy_seconds: Callable[[], float]) -> None:
        self.watts = config.watts
        self._busy_seconds = busy_seconds

    async def read(self) -> float:
        return self.watts * self._busy_seconds()


async def _get_text(session: aiohttp.ClientSession, url: str) -> str:
    try:
        async with session.get(url, timeout=HTTP_TIMEOUT) as response:
            response.raise_for_status()
            return await response.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise EnergySourceError(f"cannot read {url}: {exc!r}") from exc


def open_source(
    config: EnergyConfig,
    session: aiohttp.ClientSession,
    busy_seconds: Callable[[], float],
) -> EnergySource:
    """The source a worker's ``energy`` configuration names."""
    if isinstance(config, NvmlEnergy):
        return NvmlSource(config)
    if isinstance(config, DcgmEnergy):
        return DcgmSource(config, session)
    if isinstance(config, ZeusdEnergy):
        return ZeusdSource(config, session)
    if isinstance(config, RaplEnergy):
        return RaplSource(config)
    return EstimatedSource(config, busy_seconds)


class BusyClock:
    """Seconds during which a worker had at least one request in flight."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._in_flight = 0
        self._since = 0.0
        self._total = 0.0

    def started(self) -> None:
        if self._in_flight == 0:
            self._since = self._clock()
        self._in_flight += 1

    def ended(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._total += self._clock() - self._since

    def seconds(self) -> float:
        running = self._clock() - self._since if self._in_flight else 0.0
        return self._total + running
