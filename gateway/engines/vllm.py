"""vLLM's OpenAI server: what it does differently from a generic one."""

from __future__ import annotations

from typing import Any, ClassVar

from gateway.config import EngineKind
from gateway.engines.base import EngineAdapter, RenderCall, text_field


class VllmAdapter(EngineAdapter):
    """vLLM aborts a request when its client disconnects (``with_cancellation``)."""

    kind = EngineKind.VLLM
    health_path = "/health"
    renders_chat = True
    metric_names: ClassVar[dict[str, str]] = {
        "vllm:num_requests_running": "requests_running",
        "vllm:num_requests_waiting": "requests_waiting",
        "vllm:kv_cache_usage_perc": "kv_cache_usage_ratio",
        "vllm:gpu_cache_usage_perc": "kv_cache_usage_ratio",  # before vLLM 0.10
        "vllm:prefix_cache_hits_total": "prefix_cache_hit_tokens",
        "vllm:prefix_cache_queries_total": "prefix_cache_query_tokens",
        "vllm:prompt_tokens_total": "prompt_tokens",
        "vllm:generation_tokens_total": "generation_tokens",
    }

    def ended_at_eos(self, choice: dict[str, Any]) -> bool | None:
        """``stop_reason`` is the stop string that matched; None at EOS, or the id of the stop
        token (vLLM adds a model's other end-of-sequence ids from its generation config to the
        stop token ids): a token id is taken as end of sequence, as SGLang's ``matched_stop``."""
        if "stop_reason" not in choice:
            return None
        return not isinstance(choice["stop_reason"], str)

    def prepare(self, body: dict[str, Any], upstream_model: str, request_id: str) -> dict[str, Any]:
        body = super().prepare(body, upstream_model, request_id)
        if body.get("stream"):
            # Per-chunk usage lets the gateway count aborted samples exactly.
            options = dict(body.get("stream_options") or {})
            options.setdefault("continuous_usage_stats", True)
            body["stream_options"] = options
        return body

    def limit_thinking(self, body: dict[str, Any], tokens: int) -> None:
        """``thinking_token_budget`` (vLLM PR #20859): the engine ends the reasoning at that
        many tokens; it needs a reasoning parser (``--reasoning-parser``)."""
        body["thinking_token_budget"] = tokens

    async def render_chat(self, call: RenderCall, messages: list[dict[str, Any]]) -> str:
        """``/tokenize`` with the chat template, then ``/detokenize`` (special tokens kept)."""
        tokenized = await call.post(
            "/tokenize",
            {"model": call.upstream_model, "messages": messages, "add_generation_prompt": True},
        )
        detokenized = await call.post(
            "/detokenize", {"model": call.upstream_model, "tokens": tokenized.get("tokens", [])}
        )
        return text_field(detokenized, "prompt", call)

    async def count_prompt_tokens(self, call: RenderCall, body: dict[str, Any]) -> int | None:
        """``/tokenize`` takes the chat (template applied) or the prompt and says ``count``."""
        request: dict[str, Any] = {"model": call.upstream_model}
        if "messages" in body:
            request.update(messages=body["messages"], add_generation_prompt=True)
        elif isinstance(body.get("prompt"), str):
            request["prompt"] = body["prompt"]
        else:
            return None
        count = (await call.post("/tokenize", request)).get("count")
        return int(count) if isinstance(count, int) else None
