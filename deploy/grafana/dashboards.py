"""The Grafana dashboards, written from the panel lists below.

Run ``python deploy/grafana/dashboards.py`` after changing them.

Writes ``deploy/grafana/dashboards/*.json`` (provisioned by ``provisioning/dashboards``) and the
panel table of ``deploy/grafana/README.md``, rendered back from the JSON files. A test checks
that both are up to date and runs every query against a real Prometheus
(``tests/e2e/test_prometheus.py``).

Queries use ``$__rate_interval`` (Grafana's rate window); ``or vector(0)`` keeps a ratio's
numerator defined when nothing of that kind happened yet.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DASHBOARDS = HERE / "dashboards"
README = HERE / "README.md"
R = "[$__rate_interval]"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


@dataclass(frozen=True)
class Panel:
    title: str
    queries: dict[str, str]  # legend -> PromQL
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel] = field(default_factory=list)


def quantiles(metric: str, by: str) -> dict[str, str]:
    return {
        f"p{q} {{{{{by}}}}}": f"histogram_quantile(0.{q}, sum by (le, {by}) "
        f"(rate({metric}_bucket{R})))"
        for q in ("50", "95", "99")
    }


OVERVIEW = Dashboard(
    "ttc-overview",
    "ttc-gateway / Overview",
    "Traffic, latency and errors of the gateway",
    [
        Panel(
            "Requests per second by strategy",
            {"{{strategy}} {{status}}": f"sum by (strategy, status) (rate(ttc_requests_total{R}))"},
            "reqps",
        ),
        Panel(
            "End-to-end latency",
            quantiles("ttc_request_duration_seconds", "strategy"),
            "s",
        ),
        Panel(
            "Error ratio (5xx)",
            {
                "errors": f'(sum(rate(ttc_requests_total{{status=~"5.."}}{R})) or vector(0)) '
                f"/ sum(rate(ttc_requests_total{R}))"
            },
            "percentunit",
        ),
        Panel(
            "Time to first token (streams)",
            quantiles("ttc_time_to_first_token_seconds", "strategy"),
            "s",
        ),
        Panel(
            "Gateway overhead p99",
            {
                "p99 {{strategy}}": "histogram_quantile(0.99, sum by (le, strategy) "
                f"(rate(ttc_gateway_overhead_seconds_bucket{R})))"
            },
            "s",
            "End-to-end time minus time waiting on workers (non-streaming requests)",
        ),
        Panel(
            "Upstream errors by worker",
            {"{{worker}} {{kind}}": f"sum by (worker, kind) (rate(ttc_upstream_errors_total{R}))"},
            "reqps",
        ),
        Panel(
            "Refused before any upstream call",
            {"{{reason}}": f"sum by (reason) (rate(ttc_access_denied_total{R})) or vector(0)"},
            "reqps",
            "API keys, rate limits and budgets: missing/unknown/revoked key, max_k, strategy, "
            "rpm, tpm, budget",
        ),
        Panel(
            "Shared state (Redis) up",
            {"{{backend}}": "min by (backend) (ttc_shared_state_up)"},
            "short",
            "0: the key store is failing; state.on_failure decides who is served meanwhile",
        ),
    ],
)

STRATEGIES = Dashboard(
    "ttc-strategies",
    "ttc-gateway / Strategies",
    "What each test-time-compute strategy spends, wastes and saves",
    [
        Panel(
            "Completion tokens per request",
            {
                "{{strategy}}": "sum by (strategy) "
                f'(rate(ttc_tokens_total{{kind="completion"}}{R})) '
                f"/ sum by (strategy) (rate(ttc_requests_total{R}))"
            },
            "short",
            "Every sample counted, aborted ones included",
        ),
        Panel(
            "Wasted tokens (share of completion tokens)",
            {
                "{{strategy}}": f'sum by (strategy) (rate(ttc_tokens_total{{kind="wasted"}}{R})) '
                f'/ sum by (strategy) (rate(ttc_tokens_total{{kind="completion"}}{R}))'
            },
            "percentunit",
            "Tokens the gateway received after the strategy had decided",
        ),
        Panel(
            "Early-stop savings (tokens/s, estimated)",
            {"{{strategy}}": f"sum by (strategy) (rate(ttc_early_stop_saved_tokens_total{R}))"},
            "short",
            "Tokens aborted samples would still have generated had they run to the end",
        ),
        Panel(
            "Samples by outcome",
            {
                "{{strategy}} {{outcome}}": "sum by (strategy, outcome) "
                f"(rate(ttc_samples_total{R}))"
            },
            "short",
        ),
        Panel(
            "Vote agreement (accuracy proxy)",
            {
                "{{strategy}}": f"sum by (strategy) (rate(ttc_vote_agreement_ratio_sum{R})) "
                f"/ sum by (strategy) (rate(ttc_vote_agreement_ratio_count{R}))"
            },
            "percentunit",
            "Share of the votes won by the answer returned; low agreement predicts wrong answers",
        ),
        Panel(
            "Cascade escalation rate",
            {
                "escalated": "(sum(rate(ttc_strategy_decisions_total"
                f'{{strategy="cascade",decision="escalated"}}{R})) or vector(0)) '
                f'/ sum(rate(ttc_strategy_decisions_total{{strategy="cascade"}}{R}))'
            },
            "percentunit",
        ),
        Panel(
            "spec_reason steps accepted",
            {
                "accepted": "sum(rate(ttc_strategy_decisions_total"
                f'{{strategy="spec_reason",decision="accepted"}}{R})) '
                f'/ sum(rate(ttc_strategy_decisions_total{{strategy="spec_reason"}}{R}))'
            },
            "percentunit",
            "Share of the small model's draft steps the large model accepted",
        ),
        Panel(
            "Step routing: steps written by the large model",
            {
                "{{strategy}}": "sum by (strategy) (rate(ttc_strategy_decisions_total"
                f'{{strategy=~"glimp_router|speculative_thinking",decision="large"}}{R})) '
                "/ sum by (strategy) (rate(ttc_strategy_decisions_total"
                f'{{strategy=~"glimp_router|speculative_thinking",decision=~"small|large"}}{R}))'
            },
            "percentunit",
            "glimp_router: steps whose glimpse entropy reached the threshold; "
            "speculative_thinking: paragraphs handed to the large model",
        ),
        Panel(
            "Thinking: share of completion tokens, and samples cut at the budget",
            {
                "{{strategy}} thinking share": "sum by (strategy) "
                f'(rate(ttc_tokens_total{{kind="thinking"}}{R})) / sum by (strategy) '
                f'(rate(ttc_tokens_total{{kind="completion"}}{R}))',
                "{{strategy}} cut share": f"sum by (strategy) (rate(ttc_thinking_cuts_total{R})) "
                f'/ sum by (strategy) (rate(ttc_samples_total{{outcome="finished"}}{R}))',
            },
            "percentunit",
            "Reasoning models: tokens spent thinking, and the samples whose thinking the "
            "gateway ended at X-TTC-Thinking-Budget (then continued with the answer)",
        ),
        Panel(
            "Time to decision",
            quantiles("ttc_time_to_decision_seconds", "strategy"),
            "s",
        ),
    ],
)

COST_ENERGY = Dashboard(
    "ttc-cost-energy",
    "ttc-gateway / Cost & Energy",
    "Dollars and joules per request and per token (estimates are labelled method=estimated)",
    [
        Panel(
            "Cost per request ($)",
            {
                "{{strategy}}": f"sum by (strategy) (rate(ttc_cost_usd_total{R})) "
                f"/ sum by (strategy) (rate(ttc_requests_total{R}))"
            },
            "currencyUSD",
            "Both bases: price table and infrastructure",
        ),
        Panel(
            "Cost per 1k completion tokens ($)",
            {
                "{{model}}": f"1000 * sum by (model) (rate(ttc_cost_usd_total{R})) "
                f'/ sum by (model) (rate(ttc_tokens_total{{kind="completion"}}{R}))'
            },
            "currencyUSD",
        ),
        Panel(
            "Spend rate by basis ($/hour)",
            {"{{basis}}": f"3600 * sum by (basis) (rate(ttc_cost_usd_total{R}))"},
            "currencyUSD",
        ),
        Panel(
            "Joules per token by worker",
            {
                "{{worker}}": f"sum by (worker) (rate(ttc_energy_joules_total{R})) "
                f'/ sum by (worker) (rate(ttc_worker_tokens_total{{kind="completion"}}{R}))'
            },
            "J",
            "All the worker's energy (idle included) over the tokens it generated",
        ),
        Panel(
            "Joules per token by model",
            {
                "{{model}} {{method}}": "sum by (model, method) "
                f"(rate(ttc_energy_attributed_joules_total{R})) / on (model) group_left "
                f'sum by (model) (rate(ttc_tokens_total{{kind="completion"}}{R}))'
            },
            "J",
            "Energy attributed to requests (idle excluded) over their completion tokens",
        ),
        Panel(
            "Energy per request (J)",
            {
                "{{strategy}}": "sum by (strategy) "
                f"(rate(ttc_energy_attributed_joules_total{R})) "
                f"/ sum by (strategy) (rate(ttc_requests_total{R}))"
            },
            "J",
        ),
        Panel(
            "Power by worker (W)",
            {
                "{{worker}} {{method}}": "sum by (worker, method) "
                + f"(rate(ttc_energy_joules_total{R}))"
            },
            "watt",
        ),
        Panel(
            "Idle share of energy",
            {
                "{{worker}}": f"sum by (worker) (rate(ttc_energy_idle_joules_total{R})) "
                f"/ sum by (worker) (rate(ttc_energy_joules_total{R}))"
            },
            "percentunit",
        ),
    ],
)

WORKERS = Dashboard(
    "ttc-workers",
    "ttc-gateway / Workers",
    "Worker load and health, as the gateway sees it and as each engine reports it",
    [
        Panel("In flight (gateway)", {"{{worker}}": "sum by (worker) (ttc_worker_in_flight)"}),
        Panel(
            "Healthy",
            {"{{worker}}": "max by (worker) (ttc_worker_healthy)"},
            "short",
            "1: passed its last health check",
        ),
        Panel(
            "Circuit breaker",
            {"{{worker}}": "max by (worker) (ttc_worker_circuit_state)"},
            "short",
            "0 closed, 1 half-open (one probe request), 2 open (no requests)",
        ),
        Panel(
            "Engine: running and waiting requests",
            {
                "{{worker}} running": "sum by (worker) (ttc_engine_requests_running)",
                "{{worker}} waiting": "sum by (worker) (ttc_engine_requests_waiting)",
            },
        ),
        Panel(
            "Engine: prefix-cache hit ratio",
            {
                "{{worker}}": "sum by (worker) "
                f"(rate(ttc_engine_prefix_cache_hit_tokens_total{R})) / sum by (worker) "
                f"(rate(ttc_engine_prefix_cache_query_tokens_total{R}))"
            },
            "percentunit",
            "Prompt tokens served from the prefix cache over prompt tokens looked up",
        ),
        Panel(
            "Routing: decisions by outcome",
            {
                "{{pool}} {{outcome}}": "sum by (pool, outcome) "
                f"(rate(ttc_routing_decisions_total{R}))"
            },
            "reqps",
            "Each upstream call's worker choice (pools[].routing.policy). hit: the worker "
            "holding the prompt's prefix; miss: none held enough, the least-loaded one; spill: "
            "the holder was too busy; balanced: a prefix-blind policy. Compare with the engines' "
            "hit ratio beside it",
        ),
        Panel(
            "Engine: KV-cache usage",
            {"{{worker}}": "max by (worker) (ttc_engine_kv_cache_usage_ratio)"},
            "percentunit",
            "vLLM and SGLang (llama.cpp no longer exports it)",
        ),
        Panel(
            "Engine: generated tokens/s",
            {"{{worker}}": f"sum by (worker) (rate(ttc_engine_generation_tokens_total{R}))"},
            "short",
            "Aborted requests included: compare with the gateway's completion tokens",
        ),
    ],
)

ALL = (OVERVIEW, STRATEGIES, COST_ENERGY, WORKERS)


def to_json(dashboard: Dashboard) -> dict[str, object]:
    panels = []
    for i, panel in enumerate(dashboard.panels):
        panels.append(
            {
                "id": i + 1,
                "type": panel.kind,
                "title": panel.title,
                "description": panel.description,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {
                        "refId": chr(ord("A") + j),
                        "datasource": DATASOURCE,
                        "expr": expr,
                        "legendFormat": legend,
                    }
                    for j, (legend, expr) in enumerate(panel.queries.items())
                ],
            }
        )
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["ttc-gateway"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": panels,
    }


def render_readme(dashboard_files: list[Path]) -> str:
    """The panel list of every dashboard, read back from its JSON."""
    lines = [
        "# Grafana dashboards",
        "",
        "Provisioned by `provisioning/` (data source `prometheus` at http://prometheus:9090; "
        "dashboards from `/var/lib/grafana/dashboards`). Generated by `dashboards.py`; the "
        "list below is rendered from the JSON files, and `tests/e2e/test_prometheus.py` runs "
        "every query against a real Prometheus scraping a real gateway.",
    ]
    for path in dashboard_files:
        data = json.loads(path.read_text())
        lines += ["", f"## {data['title']} (`dashboards/{path.name}`)", "", data["description"]]
        lines += ["", "| panel | query |", "|---|---|"]
        for panel in data["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("|", "\\|")
                lines.append(f"| {panel['title']} | `{expr}` |")
    return "\n".join(lines) + "\n"


def expected_files() -> dict[Path, str]:
    files = {DASHBOARDS / f"{d.uid}.json": json.dumps(to_json(d), indent=2) + "\n" for d in ALL}
    return files


def main() -> int:
    DASHBOARDS.mkdir(exist_ok=True)
    for path, text in expected_files().items():
        path.write_text(text)
    README.write_text(render_readme([DASHBOARDS / f"{d.uid}.json" for d in ALL]))
    print(f"wrote {len(ALL)} dashboards and {README.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
