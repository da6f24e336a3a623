"""SGLang's OpenAI server: what it does differently from a generic one."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import aiohttp

from gateway.config import EngineKind
from gateway.engines.base import EngineAdapter

log = logging.getLogger("ttc.engines")


class SglangAdapter(EngineAdapter):
    """SGLang aborts on disconnect only after a delay; an explicit ``/abort_request`` is immediate.

    The gateway sets ``rid`` (SGLang's request id) so it can name the request to abort.
    """

    kind = EngineKind.SGLANG
    health_path = "/health"
    metric_names: ClassVar[dict[str, str]] = {
        "sglang:num_running_reqs": "requests_running",
        "sglang:num_queue_reqs": "requests_waiting",
        "sglang:token_usage": "kv_cache_usage_ratio",
        "sglang:cached_tokens_total": "prefix_cache_hit_tokens",
        "sglang:prompt_tokens_total": "prompt_tokens",
        "sglang:generation_tokens_total": "generation_tokens",
    }

    def ended_at_eos(self, choice: dict[str, Any]) -> bool | None:
        """``matched_stop`` is the stop string that matched, or the EOS token's id."""
        if "matched_stop" not in choice:
            return None
        return not isinstance(choice["matched_stop"], str)

    def complete_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Every prompt token is looked up in the radix cache."""
        if "prompt_tokens" in stats:
            stats["prefix_cache_query_tokens"] = stats["prompt_tokens"]
        return stats

    def prepare(self, body: dict[str, Any], upstream_model: str, request_id: str) -> dict[str, Any]:
        body = super().prepare(body, upstream_model, request_id)
        body.setdefault("rid", request_id)
        return body

    async def abort(self, session: aiohttp.ClientSession, base_url: str, request_id: str) -> None:
        try:
            async with session.post(
                f"{base_url}/abort_request",
                json={"rid": request_id},
                timeout=aiohttp.ClientTimeout(total=2),
            ) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("SGLang abort of %s at %s failed: %s", request_id, base_url, exc)
