"""llama.cpp's server: what it does differently from a generic OpenAI server.

(The embedded worker that runs it in a child process is ``gateway.engines.llamacpp_worker``.)
"""

from __future__ import annotations

from typing import Any, ClassVar

from gateway.config import EngineKind
from gateway.engines.base import EngineAdapter, RenderCall, text_field


class LlamaCppAdapter(EngineAdapter):
    """llama.cpp server. With ``n > 1`` the prompt is prefilled once and shared by the
    choices, but a stream ends with one usage chunk per choice (each repeating the prompt), each
    right after its choice's finish chunk, and ``usage.completion_tokens`` counts only one
    choice. That count includes the end-of-sequence token, which is never streamed: each choice
    is billed its own usage chunk's count (``usage_per_choice``), as ``tokens_predicted_total``
    counts it. Streams are asked for
    ``timings_per_token``: every content chunk then carries ``prompt_n`` (prompt tokens
    evaluated) and ``cache_n`` (taken from the cache), so an aborted request's prompt is known
    exactly (``llamacpp:prompt_tokens_total`` and ``_cached_total`` count the same)."""

    kind = EngineKind.LLAMACPP
    health_path = "/health"
    renders_chat = True
    usage_counts_all_choices = False
    usage_per_choice = True
    metric_names: ClassVar[dict[str, str]] = {
        "llamacpp:requests_processing": "requests_running",
        "llamacpp:requests_deferred": "requests_waiting",
        "llamacpp:kv_cache_usage_ratio": "kv_cache_usage_ratio",
        "llamacpp:prompt_tokens_cached_total": "prefix_cache_hit_tokens",
        "llamacpp:prompt_tokens_total": "prompt_tokens",
        "llamacpp:tokens_predicted_total": "generation_tokens",
    }

    def ended_at_eos(self, choice: dict[str, Any]) -> bool | None:
        """The native ``stop_type``: ``eos``, ``word`` (a stop string) or ``limit``."""
        if "stop_type" not in choice:
            return None
        return bool(choice["stop_type"] == "eos")

    def complete_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """``prompt_tokens_total`` counts the prompt tokens it computed: the lookups are those
        plus the ones taken from the cache."""
        if "prompt_tokens" in stats:
            stats["prefix_cache_query_tokens"] = stats["prompt_tokens"] + stats.get(
                "prefix_cache_hit_tokens", 0.0
            )
        return stats

    def prepare(self, body: dict[str, Any], upstream_model: str, request_id: str) -> dict[str, Any]:
        body = super().prepare(body, upstream_model, request_id)
        if body.get("stream"):
            body["timings_per_token"] = True
        return body

    def chunk_prompt(self, chunk: dict[str, Any]) -> tuple[int, int] | None:
        timings = chunk.get("timings")
        if not isinstance(timings, dict) or "prompt_n" not in timings:
            return None
        cached = int(timings.get("cache_n") or 0)
        return int(timings["prompt_n"]) + cached, cached

    async def render_chat(self, call: RenderCall, messages: list[dict[str, Any]]) -> str:
        """``POST /apply-template`` renders with the generation prompt appended."""
        rendered = await call.post("/apply-template", {"messages": messages})
        return text_field(rendered, "prompt", call)

    async def count_prompt_tokens(self, call: RenderCall, body: dict[str, Any]) -> int | None:
        """The chat rendered by ``/apply-template``, then ``/tokenize`` (special tokens parsed;
        a text prompt gets the BOS the server adds)."""
        if "messages" in body:
            text, add_special = await self.render_chat(call, body["messages"]), False
        elif isinstance(body.get("prompt"), str):
            text, add_special = body["prompt"], True
        else:
            return None
        tokens = (await call.post("/tokenize", {"content": text, "add_special": add_special})).get(
            "tokens"
        )
        return len(tokens) if isinstance(tokens, list) else None
