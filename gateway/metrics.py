"""Prometheus metrics of one gateway instance, in their own registry (no global state).

Namespace ``ttc_``, base units, bounded labels only (strategy, model, pool, worker, status,
kind, role): never prompts, keys or request ids.
"""

from __future__ import annotations

import contextlib
import os
import re

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STATUSES_AT_START = ("200", "400", "429", "499", "500", "502", "503", "504")
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


def multiprocess_dir() -> str | None:
    """Where the processes of a multi-process gateway (``server.workers`` > 1) keep their
    metric values (prometheus-client's multiprocess mode); None in a single process."""
    return os.environ.get(MULTIPROC_ENV) or None


class GatewayMetrics:
    """Every metric the gateway exports.

    With ``server.workers`` > 1 every process writes its values to files in
    ``PROMETHEUS_MULTIPROC_DIR`` (set by ``ttc-gateway serve`` before the processes start) and
    ``/metrics``, whichever process answers, exports counters and histograms summed over all
    of them and gauges combined by their ``multiprocess_mode``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._collectors: list[Collector] = []  # per-process ones (engine figures)
        r = self.registry
        self.requests = Counter(
            "ttc_requests",
            "Requests answered, by strategy, model, endpoint and HTTP status",
            ["strategy", "model", "endpoint", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "ttc_request_duration_seconds",
            "End-to-end request latency as seen by the gateway",
            ["strategy", "model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "ttc_time_to_first_token_seconds",
            "Time from request arrival to the first content chunk sent to the client (streams)",
            ["strategy", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "ttc_tokens",
            "Tokens of upstream calls, counted by the gateway, by kind: prompt, cached_prompt "
            "(part of prompt), completion (every sample, aborted ones included), wasted (part of "
            "completion: generated after the strategy decided), thinking (part of completion: "
            "reasoning models' thinking)",
            ["strategy", "model", "role", "kind"],
            registry=r,
        )
        self.worker_tokens = Counter(
            "ttc_worker_tokens",
            "Tokens each worker processed for the gateway (kind: prompt, completion)",
            ["pool", "worker", "kind"],
            registry=r,
        )
        self.time_to_decision = Histogram(
            "ttc_time_to_decision_seconds",
            "Time from request arrival to the strategy's decision",
            ["strategy", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.samples = Counter(
            "ttc_samples",
            "Samples launched by strategies, by how they ended: finished, aborted, failed",
            ["strategy", "outcome"],
            registry=r,
        )
        self.vote_agreement = Histogram(
            "ttc_vote_agreement_ratio",
            "Share of the valid votes that went to the winning answer (voting strategies)",
            ["strategy"],
            buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.answer_checks = Counter(
            "ttc_answer_equivalence_checks",
            "math-verify checks of two answers (answers.equivalence: symbolic), by result: "
            "same, different, timeout, error (the last two count as different)",
            ["result"],
            registry=r,
        )
        self.strategy_decisions = Counter(
            "ttc_strategy_decisions",
            "What strategies decided, as each reports it: cascade requests accepted or "
            "escalated; spec_reason draft steps accepted or rejected; glimp_router steps by "
            "writer (small, large); speculative_thinking paragraphs by writer (small, large, "
            "recap) and verify continuations; adaptive_consistency "
            "and deepconf requests by why they stopped (stopped_consensus, stopped_k, "
            "stopped_budget_*), deepconf traces killed",
            ["strategy", "decision"],
            registry=r,
        )
        self.thinking_cuts = Counter(
            "ttc_thinking_cuts",
            "Samples whose thinking was ended at the request's thinking budget: by the "
            "gateway (each then continued once with the end-of-thinking delimiter) or by the "
            "engine (native_budget); at a budget of 0, every sample",
            ["strategy", "model"],
            registry=r,
        )
        self.early_stop_saved_tokens = Counter(
            "ttc_early_stop_saved_tokens",
            "Estimated tokens not generated because aborted samples were stopped early: per "
            "aborted sample, the mean length of the request's finished samples minus what it "
            "had produced (0 if longer), capped at max_tokens",
            ["strategy"],
            registry=r,
        )
        # -- cost and energy (gateway/metering/meter.py) --
        self.cost = Counter(
            "ttc_cost_usd",
            "Cost attributed to requests, by basis: price_table (per-token prices) or "
            "infrastructure (worker $/hour split by token work)",
            ["basis", "model", "strategy"],
            registry=r,
        )
        self.cost_unattributed = Counter(
            "ttc_cost_unattributed_usd",
            "Infrastructure cost of worker time with no request to charge (idle)",
            ["worker"],
            registry=r,
        )
        self.energy = Counter(
            "ttc_energy",
            "Energy of each worker as its source reports it (method: measured or estimated); "
            "rate() is power in watts",
            ["pool", "worker", "method"],
            registry=r,
            unit="joules",
        )
        self.energy_idle = Counter(
            "ttc_energy_idle",
            "Part of ttc_energy_joules_total attributed to no request: idle power",
            ["worker", "method"],
            registry=r,
            unit="joules",
        )
        self.energy_attributed = Counter(
            "ttc_energy_attributed",
            "Part of ttc_energy_joules_total attributed to requests by their token work",
            ["model", "strategy", "method"],
            registry=r,
            unit="joules",
        )
        self.energy_source_info = Gauge(
            "ttc_energy_source_info",
            "1 for each worker's energy source; method=estimated means no counter behind it",
            ["worker", "source", "method"],
            registry=r,
            multiprocess_mode="max",
        )
        self.price_table_info = Gauge(
            "ttc_price_table_info",
            "1, labelled with the version of the price book in use",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.client_disconnects = Counter(
            "ttc_client_disconnects",
            "Requests whose client went away before the answer; upstream work was aborted",
            ["model", "endpoint"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "ttc_upstream_errors",
            "Failed calls to workers, by kind (connect, timeout, http_5xx, http_4xx, protocol; "
            "dropped: the connection closed before any answer and the call was sent once more)",
            ["pool", "worker", "kind"],
            registry=r,
        )
        self.routing_decisions = Counter(
            "ttc_routing_decisions",
            "Workers chosen for upstream calls, by pool, policy and outcome: hit (the worker "
            "holding the prompt's prefix), miss (none held enough: the least-loaded one), spill "
            "(the holder was too busy: the least-loaded one), balanced (a prefix-blind policy)",
            ["pool", "policy", "outcome"],
            registry=r,
        )
        self.routing_index_blocks = Gauge(
            "ttc_routing_index_blocks",
            "Prompt blocks in the pool's prefix index (cache_aware; bounded by "
            "routing.max_index_blocks)",
            ["pool"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.worker_in_flight = Gauge(
            "ttc_worker_in_flight",
            "Requests the gateway has in flight on each worker",
            ["pool", "worker"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.worker_healthy = Gauge(
            "ttc_worker_healthy",
            "1 if the worker passed its last health check, else 0",
            ["pool", "worker"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.overhead = Histogram(
            "ttc_gateway_overhead_seconds",
            "Time spent in the gateway itself on non-streaming requests: end-to-end time minus "
            "the time spent waiting on workers",
            ["strategy"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.access_denied = Counter(
            "ttc_access_denied",
            "Requests refused before any upstream call, by reason (missing_key, unknown_key, "
            "revoked_key, max_k, strategy, rpm, tpm, tpm_request, budget)",
            ["reason"],
            registry=r,
        )
        self.shared_state_up = Gauge(
            "ttc_shared_state_up",
            "1 if the last call to the key store (redis or memory) succeeded, else 0",
            ["backend"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.shared_state_errors = Counter(
            "ttc_shared_state_errors",
            "Failed calls to the key store, by operation (admit, settle)",
            ["backend", "operation"],
            registry=r,
        )
        self.shared_state_pending = Gauge(
            "ttc_shared_state_pending_settlements",
            "Settlements waiting for the key store to come back",
            ["backend"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.degraded_admissions = Counter(
            "ttc_degraded_admissions",
            "Requests decided while the key store was down: let in (open) or refused with 503",
            ["outcome"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "ttc_worker_circuit_state",
            "Each worker's circuit breaker: 0 closed, 1 half-open (one probe), 2 open",
            ["pool", "worker"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.circuit_opened = Counter(
            "ttc_worker_circuit_opened",
            "Times a worker's circuit opened (consecutive failures, or a failed probe)",
            ["pool", "worker"],
            registry=r,
        )
        self.response_cache = Counter(
            "ttc_response_cache",
            "Response cache lookups: hit, miss, skipped (not deterministic or streamed), error",
            ["result"],
            registry=r,
        )

    def start_request_series(self, models: list[str], strategies: list[str]) -> None:
        """Create the request series of the usual statuses at 0, so that rate() and the
        error-ratio panel and alert see a series' first request (a series that appears with
        its first increment shows none: Prometheus has no earlier sample to compare with)."""
        for model in models:
            for strategy in strategies:
                endpoints = ("chat", "completions") if strategy == "single" else ("chat",)
                for endpoint in endpoints:
                    for status in STATUSES_AT_START:
                        self.requests.labels(strategy, model, endpoint, status)

    def add_collector(self, collector: Collector) -> None:
        """A collector whose figures are this process's view (not summed over processes)."""
        self.registry.register(collector)
        self._collectors.append(collector)

    def exposition(self) -> bytes:
        """The ``/metrics`` page: this registry, or every process's values when several
        processes serve (gauges of processes that died are dropped first)."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        for name in os.listdir(path):
            found = _LIVE_GAUGE_FILE.match(name)
            if found and not _alive(int(found.group(1))):
                with contextlib.suppress(FileNotFoundError):  # another scrape got there first
                    multiprocess.mark_process_dead(int(found.group(1)), path)  # type: ignore[no-untyped-call]
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
        for collector in self._collectors:
            registry.register(collector)
        return generate_latest(registry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
