"""Engine adapters: what differs between vLLM, SGLang, llama.cpp and a generic OpenAI server.

Each adapter answers the same few questions for the worker pool: how to shape the upstream body,
where the health endpoint is, whether ``usage`` can be trusted when ``n > 1``, how to abort a
request beyond closing its connection, and how to render a chat with the engine's own template
(for strategies that continue raw text step by step). Quirks live here and nowhere else.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import aiohttp

from gateway.config import EngineKind
from gateway.errors import InvalidRequest, bad_gateway

log = logging.getLogger("ttc.engines")


class EngineAdapter:
    """Defaults for an OpenAI-compatible server; subclasses override their quirks."""

    kind: ClassVar[EngineKind] = EngineKind.OPENAI
    health_path: ClassVar[str] = "/v1/models"
    # False when the engine's `usage.completion_tokens` covers only some choices of an n>1
    # request, so the gateway must count tokens from the stream itself.
    usage_counts_all_choices: ClassVar[bool] = True

    def chunk_prompt(self, chunk: dict[str, Any]) -> tuple[int, int] | None:
        """(prompt tokens, cached prompt tokens) of the request, from a content chunk of an
        engine that says them before its usage chunk; None when the chunk does not say."""
        return None

    async def count_prompt_tokens(self, call: RenderCall, body: dict[str, Any]) -> int | None:
        """The prompt tokens of a request body, counted by the engine's own tokenizer (what
        the gateway bills when a call was aborted before the engine reported them); None when
        this engine cannot count them."""
        return None

    def prepare(self, body: dict[str, Any], upstream_model: str, request_id: str) -> dict[str, Any]:
        """The body to send upstream: the client's body with the engine's model name."""
        body["model"] = upstream_model
        return body

    def needs_streaming_for_usage(self, n: int) -> bool:
        """Whether a non-streaming request must be streamed upstream to be counted correctly."""
        return n > 1 and not self.usage_counts_all_choices

    async def abort(self, session: aiohttp.ClientSession, base_url: str, request_id: str) -> None:
        """Extra abort beyond closing the connection (which every adapter does)."""

    async def render_chat(self, call: RenderCall, messages: list[dict[str, Any]]) -> str:
        """The engine's chat template applied to ``messages``, generation prompt appended."""
        raise InvalidRequest(
            f"a {self.kind.value} engine cannot render chat templates for raw-prompt step "
            "continuation; this strategy needs a llama.cpp or vLLM pool for that role",
            code="render_unsupported",
        )


class RenderCall:
    """One worker's coordinates for a template-rendering or tokenizing call (JSON in, JSON
    out). Errors name the worker (``worker_name``), never its address."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        headers: dict[str, str],
        upstream_model: str,
        timeout_s: float,
        worker_name: str = "worker",
    ) -> None:
        self.session = session
        self.base_url = base_url
        self.headers = headers
        self.upstream_model = upstream_model
        self.worker_name = worker_name
        self.timeout = aiohttp.ClientTimeout(total=max(timeout_s, 0.001))

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self.session.post(
                self.base_url + path, json=body, headers=self.headers, timeout=self.timeout
            ) as response:
                data = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("%s%s failed: %s: %s", self.base_url, path, type(exc).__name__, exc)
            raise bad_gateway(
                f"worker {self.worker_name} failed on {path}: {type(exc).__name__}"
            ) from None
        if status != 200 or not isinstance(data, dict):
            raise bad_gateway(
                f"worker {self.worker_name} answered {path} with HTTP {status}: {str(data)[:300]}"
            )
        return data


class OpenAIAdapter(EngineAdapter):
    kind = EngineKind.OPENAI


class VllmAdapter(EngineAdapter):
    """vLLM aborts a request when its client disconnects (``with_cancellation``)."""

    kind = EngineKind.VLLM
    health_path = "/health"

    def prepare(self, body: dict[str, Any], upstream_model: str, request_id: str) -> dict[str, Any]:
        body = super().prepare(body, upstream_model, request_id)
        if body.get("stream"):
            # Per-chunk usage lets the gateway count aborted samples exactly.
            options = dict(body.get("stream_options") or {})
            options.setdefault("continuous_usage_stats", True)
            body["stream_options"] = options
        return body

    async def render_chat(self, call: RenderCall, messages: list[dict[str, Any]]) -> str:
        """``/tokenize`` with the chat template, then ``/detokenize`` (special tokens kept)."""
        tokenized = await call.post(
            "/tokenize",
            {"model": call.upstream_model, "messages": messages, "add_generation_prompt": True},
        )
        detokenized = await call.post(
            "/detokenize", {"model": call.upstream_model, "tokens": tokenized.get("tokens", [])}
        )
        return _text_field(detokenized, "prompt", call)

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


class SglangAdapter(EngineAdapter):
    """SGLang aborts on disconnect only after a delay; an explicit ``/abort_request`` is immediate.

    The gateway sets ``rid`` (SGLang's request id) so it can name the request to abort.
    """

    kind = EngineKind.SGLANG
    health_path = "/health"

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
    """llama.cpp server. With ``n > 1`` the prompt is prefilled once and shared by the
    choices, but a stream ends with one usage chunk per choice (each repeating the prompt) and
    ``usage.completion_tokens`` counts only one choice. Streams are asked for
    ``timings_per_token``: every content chunk then carries ``prompt_n`` (prompt tokens
    evaluated) and ``cache_n`` (taken from the cache), so an aborted request's prompt is known
    exactly (``llamacpp:prompt_tokens_total`` and ``_cached_total`` count the same)."""

    kind = EngineKind.LLAMACPP
    health_path = "/health"
    usage_counts_all_choices = False

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
        return _text_field(rendered, "prompt", call)

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


def _text_field(data: dict[str, Any], name: str, call: RenderCall) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise bad_gateway(f"worker {call.worker_name} sent no {name!r} text when rendering")
    return value


_ADAPTERS: dict[EngineKind, type[EngineAdapter]] = {
    EngineKind.OPENAI: OpenAIAdapter,
    EngineKind.VLLM: VllmAdapter,
    EngineKind.SGLANG: SglangAdapter,
    EngineKind.LLAMACPP: LlamaCppAdapter,
}


def adapter_for(kind: EngineKind) -> EngineAdapter:
    return _ADAPTERS[kind]()
