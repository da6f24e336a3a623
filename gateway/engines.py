"""Engine adapters: what differs between vLLM, SGLang, llama.cpp and a generic OpenAI server.

Each adapter answers the same few questions for the worker pool: how to shape the upstream body,
where the health endpoint is, whether ``usage`` can be trusted when ``n > 1``, and how to abort a
request beyond closing its connection. Quirks live here and nowhere else.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import aiohttp

from gateway.config import EngineKind

log = logging.getLogger("ttc.engines")


class EngineAdapter:
    """Defaults for an OpenAI-compatible server; subclasses override their quirks."""

    kind: ClassVar[EngineKind] = EngineKind.OPENAI
    health_path: ClassVar[str] = "/v1/models"
    metrics_path: ClassVar[str | None] = None
    # False when the engine's `usage.completion_tokens` covers only some choices of an n>1
    # request, so the gateway must count tokens from the stream itself.
    usage_counts_all_choices: ClassVar[bool] = True

    def prepare(self, body: dict[str, Any], upstream_model: str, request_id: str) -> dict[str, Any]:
        """The body to send upstream: the client's body with the engine's model name."""
        body["model"] = upstream_model
        return body

    def needs_streaming_for_usage(self, n: int) -> bool:
        """Whether a non-streaming request must be streamed upstream to be counted correctly."""
        return n > 1 and not self.usage_counts_all_choices

    async def abort(self, session: aiohttp.ClientSession, base_url: str, request_id: str) -> None:
        """Extra abort beyond closing the connection (which every adapter does)."""


class OpenAIAdapter(EngineAdapter):
    kind = EngineKind.OPENAI


class VllmAdapter(EngineAdapter):
    """vLLM aborts a request when its client disconnects (``with_cancellation``)."""

    kind = EngineKind.VLLM
    health_path = "/health"
    metrics_path = "/metrics"

    def prepare(self, body: dict[str, Any], upstream_model: str, request_id: str) -> dict[str, Any]:
        body = super().prepare(body, upstream_model, request_id)
        if body.get("stream"):
            # Per-chunk usage lets the gateway count aborted samples exactly.
            options = dict(body.get("stream_options") or {})
            options.setdefault("continuous_usage_stats", True)
            body["stream_options"] = options
        return body


class SglangAdapter(EngineAdapter):
    """SGLang aborts on disconnect only after a delay; an explicit ``/abort_request`` is immediate.

    The gateway sets ``rid`` (SGLang's request id) so it can name the request to abort.
    """

    kind = EngineKind.SGLANG
    health_path = "/health"
    metrics_path = "/metrics"

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


class LlamaCppAdapter(EngineAdapter):
    """llama.cpp server: with ``n > 1`` its ``usage.completion_tokens`` counts only one choice."""

    kind = EngineKind.LLAMACPP
    health_path = "/health"
    metrics_path = "/metrics"
    usage_counts_all_choices = False


_ADAPTERS: dict[EngineKind, type[EngineAdapter]] = {
    EngineKind.OPENAI: OpenAIAdapter,
    EngineKind.VLLM: VllmAdapter,
    EngineKind.SGLANG: SglangAdapter,
    EngineKind.LLAMACPP: LlamaCppAdapter,
}


def adapter_for(kind: EngineKind) -> EngineAdapter:
    return _ADAPTERS[kind]()
