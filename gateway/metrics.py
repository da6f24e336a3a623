"""Prometheus metrics of one gateway instance, in their own registry (no global state).

Namespace ``ttc_``, base units, bounded labels only (strategy, model, pool, worker, status,
kind, role): never prompts, keys or request ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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


class GatewayMetrics:
    """Every metric the gateway exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
            "Tokens processed, counted by the gateway (kind: prompt, cached_prompt, completion)",
            ["model", "role", "kind"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "ttc_client_disconnects",
            "Requests whose client went away before the answer; upstream work was aborted",
            ["model", "endpoint"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "ttc_upstream_errors",
            "Failed calls to workers, by kind (connect, timeout, http_5xx, http_4xx, protocol)",
            ["pool", "worker", "kind"],
            registry=r,
        )
        self.worker_in_flight = Gauge(
            "ttc_worker_in_flight",
            "Requests the gateway has in flight on each worker",
            ["pool", "worker"],
            registry=r,
        )
        self.worker_healthy = Gauge(
            "ttc_worker_healthy",
            "1 if the worker passed its last health check, else 0",
            ["pool", "worker"],
            registry=r,
        )
        self.overhead = Histogram(
            "ttc_gateway_overhead_seconds",
            "Time spent in the gateway itself on non-streaming requests: end-to-end time minus "
            "the time spent waiting on workers",
            ["strategy"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
