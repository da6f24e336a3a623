"""What each engine says about itself on ``/metrics``, under one set of names.

At every health check the pool reads the worker's own Prometheus page and keeps the figures
below, found under the names its adapter lists (``EngineAdapter.metric_names``, in each engine's
module; the table sums them up); ``gateway.upstream.engine_stats`` exports the latest of them
as ``ttc_engine_*`` series labelled with pool, worker and engine, so one dashboard query covers
all engines alike.

=========================  ======================  ==================  ============================
figure                     vLLM (``vllm:``)        SGLang (``sglang:``)  llama.cpp (``llamacpp:``)
=========================  ======================  ==================  ============================
requests_running           num_requests_running    num_running_reqs    requests_processing
requests_waiting           num_requests_waiting    num_queue_reqs      requests_deferred
kv_cache_usage_ratio       kv_cache_usage_perc     token_usage         (not exported any more)
prefix_cache_hit_tokens    prefix_cache_hits       cached_tokens       prompt_tokens_cached
prefix_cache_query_tokens  prefix_cache_queries    prompt_tokens       cached + prompt_tokens
prompt_tokens              prompt_tokens           prompt_tokens       prompt_tokens
generation_tokens          generation_tokens       generation_tokens   tokens_predicted
=========================  ======================  ==================  ============================

Counters carry ``_total`` on the wire.
llama.cpp's ``prompt_tokens_total`` counts the prompt tokens it computed, so its prefix-cache
queries are those plus the cached ones. A figure an engine does not export is simply absent.
"""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.engines.base import EngineAdapter

EngineStats = dict[str, float]

GAUGES = {
    "requests_running": "Requests the engine is running (its own count)",
    "requests_waiting": "Requests queued in the engine",
    "kv_cache_usage_ratio": "Share of the engine's KV cache in use, 0-1",
}
COUNTERS = {
    "prefix_cache_hit_tokens": "Prompt tokens served from the engine's prefix cache",
    "prefix_cache_query_tokens": "Prompt tokens looked up in the engine's prefix cache",
    "prompt_tokens": "Prompt tokens the engine processed",
    "generation_tokens": "Tokens the engine generated, aborted requests included",
}


def parse_engine_metrics(adapter: EngineAdapter, text: str) -> EngineStats:
    """The figures of one ``/metrics`` page under the adapter's names, summed over label sets
    (vLLM labels by model), completed by the adapter."""
    stats: EngineStats = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            figure = adapter.metric_names.get(sample.name)
            if figure is not None:
                stats[figure] = stats.get(figure, 0.0) + sample.value
    return adapter.complete_stats(stats)


async def scrape_engine(
    session: aiohttp.ClientSession, url: str, adapter: EngineAdapter, timeout_s: float
) -> EngineStats | None:
    """The worker's figures, or None if it exports none (or the page cannot be read)."""
    if not adapter.metric_names:
        return None
    try:
        async with session.get(
            url + "/metrics", timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            if response.status != 200:
                return None
            text = await response.text()
        return parse_engine_metrics(adapter, text) or None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
