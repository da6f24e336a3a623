"""What every engine adapter answers, and the defaults of a generic OpenAI-compatible server.

Each engine kind has its own module beside this one holding all its quirks (request shaping,
abort, stream dialect, metric names, chat templates): ``vllm``, ``sglang``, ``llamacpp``; a
server of none of those kinds gets these defaults (``generic``).
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
    # True when a stream ends each choice with a usage chunk of its own, right after that
    # choice's finish chunk (``StreamTally`` then bills each choice the engine's count).
    usage_per_choice: ClassVar[bool] = False
    # Whether ``render_chat`` works (raw-prompt continuation: step-wise strategies, thinking
    # budgets the gateway enforces).
    renders_chat: ClassVar[bool] = False

    # The engine's own /metrics names for the figures the gateway exports as ttc_engine_*
    # (``gateway.engines.metrics``); empty: the engine exports none of them.
    metric_names: ClassVar[dict[str, str]] = {}

    def chunk_prompt(self, chunk: dict[str, Any]) -> tuple[int, int] | None:
        """(prompt tokens, cached prompt tokens) of the request, from a content chunk of an
        engine that says them before its usage chunk; None when the chunk does not say."""
        return None

    async def count_prompt_tokens(self, call: RenderCall, body: dict[str, Any]) -> int | None:
        """The prompt tokens of a request body, counted by the engine's own tokenizer (what
        the gateway bills when a call was aborted before the engine reported them); None when
        this engine cannot count them."""
        return None

    def ended_at_eos(self, choice: dict[str, Any]) -> bool | None:
        """Whether a streamed choice that finished with "stop" hit end-of-sequence rather than
        a stop string; None when the engine does not say."""
        return None

    def complete_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Figures the engine does not export but its others imply (see ``metric_names``)."""
        return stats

    def prepare(self, body: dict[str, Any], upstream_model: str, request_id: str) -> dict[str, Any]:
        """The body to send upstream: the client's body with the engine's model name."""
        body["model"] = upstream_model
        return body

    def needs_streaming_for_usage(self, n: int) -> bool:
        """Whether a non-streaming request must be streamed upstream to be counted correctly."""
        return n > 1 and not self.usage_counts_all_choices

    def limit_thinking(self, body: dict[str, Any], tokens: int) -> None:
        """Ask the engine to end the thinking after ``tokens`` tokens itself (a pool with
        ``reasoning.native_budget``; the configuration allows it only where this is done)."""
        raise NotImplementedError(f"a {self.kind.value} engine has no thinking budget of its own")

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
        """POST ``body`` and return the JSON answer. A connection dropped before any answer
        (a kept-alive one the engine had closed while idle) is tried once more: rendering
        and tokenizing generate nothing, so a second try costs nothing."""
        try:
            try:
                data, status = await self._post_once(path, body)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionResetError):
                data, status = await self._post_once(path, body)
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

    async def _post_once(self, path: str, body: dict[str, Any]) -> tuple[Any, int]:
        async with self.session.post(
            self.base_url + path, json=body, headers=self.headers, timeout=self.timeout
        ) as response:
            return await response.json(content_type=None), response.status


def text_field(data: dict[str, Any], name: str, call: RenderCall) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise bad_gateway(f"worker {call.worker_name} sent no {name!r} text when rendering")
    return value
