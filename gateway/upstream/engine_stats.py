"""The engines' own figures as ``ttc_engine_*`` series, per pool and worker.

The pools read each worker's ``/metrics`` page at every health check
(``gateway.engines.metrics``: each engine's names for the same figures); this collector exports
the latest of them, so one dashboard query covers vLLM, SGLang and llama.cpp alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.engines.metrics import COUNTERS, GAUGES
from gateway.upstream.pool import WorkerPool


class EngineCollector(Collector):
    """Exports the latest engine figures of every worker of the pools given."""

    def __init__(self, pools: Iterable[WorkerPool]) -> None:
        self.pools = list(pools)

    def collect(self) -> Iterator[Metric]:
        labels = ["pool", "worker", "engine"]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            **{
                f: GaugeMetricFamily(f"ttc_engine_{f}", doc, labels=labels)
                for f, doc in GAUGES.items()
            },
            **{
                f: CounterMetricFamily(f"ttc_engine_{f}", doc, labels=labels)
                for f, doc in COUNTERS.items()
            },
        }
        for pool in self.pools:
            for worker in pool.workers:
                for figure, value in (worker.engine_stats or {}).items():
                    families[figure].add_metric(
                        [pool.name, worker.name, pool.config.engine.value], value
                    )
        yield from families.values()
