"""Per-engine wire shapes: what differs between vLLM, SGLang, llama.cpp and a generic server.

Shapes were checked against real servers: vLLM 0.x CPU captures in
``deploy/vllm-cpu/captures/`` and a live llama.cpp (xllamacpp) server. Each ``Flavor`` is data
plus a few small renderers, so the engine in ``engine.py`` stays flavor-agnostic.
"""

from __future__ import annotations

import secrets
import string
import time
from dataclasses import dataclass
from typing import Any

_ALNUM = string.ascii_letters + string.digits
LLAMACPP_MODEL_PATH = "/models/standin-135M-Instruct.Q4_1.gguf"


def _alnum(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


@dataclass(frozen=True)
class Flavor:
    """The wire-format choices of one engine."""

    name: str
    # finish_reason travels on the last token's chunk (vLLM, SGLang) or on its own chunk with an
    # empty delta (llama.cpp, OpenAI)
    finish_on_last_token: bool
    role_content: str | None  # the content of the first (role) delta of each choice
    # llama.cpp counts only one choice of an n>1 request in `usage`, and streams one usage
    # chunk per choice, each counting that choice alone
    usage_per_choice: bool
    health_body: bytes | None  # None: no /health route (404)
    metric_prefix: str | None  # None: no /metrics route (404)
    system_fingerprint: str | None

    def completion_id(self, endpoint: str, rid: str) -> str:
        if self.name == "sglang":
            return rid  # SGLang's response id is the request's rid
        if self.name == "llamacpp":
            return "chatcmpl-" + _alnum(32)  # also for text completions
        prefix = "chatcmpl-" if endpoint == "chat" else "cmpl-"
        if self.name == "vllm":
            return prefix + secrets.token_hex(8)
        return prefix + _alnum(24)

    def response_model(self, requested: str) -> str:
        return LLAMACPP_MODEL_PATH if self.name == "llamacpp" else requested

    def choice_extras(
        self, finish_reason: str | None, stop: str | None, final: bool = False
    ) -> dict[str, Any]:
        """Engine-specific fields next to ``finish_reason`` (``final``: a non-streamed choice)."""
        if self.name == "vllm":
            extras: dict[str, Any] = {"stop_reason": stop, "token_ids": None}
            if final:
                extras["routed_experts"] = None
            return extras if finish_reason else {}
        if self.name == "sglang" and finish_reason:
            return {"matched_stop": stop}
        return {}

    def message_extras(self) -> dict[str, Any]:
        if self.name == "vllm":
            return {
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
            }
        if self.name == "sglang":
            return {"reasoning_content": None, "tool_calls": None}
        if self.name == "openai":
            return {"refusal": None, "annotations": []}
        return {}

    def top_extras(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """Extra top-level fields of a final object (llama.cpp ``timings``)."""
        if self.name != "llamacpp":
            return {}
        return {
            "timings": {
                "cache_n": 0,
                "prompt_n": prompt_tokens,
                "prompt_ms": 1.0,
                "prompt_per_token_ms": 1.0 / max(1, prompt_tokens),
                "prompt_per_second": 1000.0 * prompt_tokens,
                "predicted_n": completion_tokens,
                "predicted_ms": 1.0,
                "predicted_per_token_ms": 1.0 / max(1, completion_tokens),
                "predicted_per_second": 1000.0 * completion_tokens,
            }
        }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(status, "InternalServerError" if status >= 500 else "BadRequest")
        if self.name == "sglang":
            return {
                "object": "error",
                "message": message,
                "type": kind,
                "param": None,
                "code": status,
            }
        if self.name == "llamacpp":
            llama_type = "server_error" if status >= 500 else "invalid_request_error"
            if status == 404:
                llama_type = "not_found_error"
            return {"error": {"code": status, "message": message, "type": llama_type}}
        if self.name == "vllm":
            return {"error": {"message": message, "type": kind, "param": None, "code": status}}
        openai_type = "server_error" if status >= 500 else "invalid_request_error"
        return {"error": {"message": message, "type": openai_type, "param": None, "code": None}}

    def models_body(self, served_model: str) -> dict[str, Any]:
        now = int(time.time())
        if self.name == "llamacpp":
            return {
                "models": [
                    {
                        "name": LLAMACPP_MODEL_PATH,
                        "model": LLAMACPP_MODEL_PATH,
                        "type": "model",
                        "capabilities": ["completion"],
                    }
                ],
                "object": "list",
                "data": [
                    {
                        "id": LLAMACPP_MODEL_PATH,
                        "aliases": [LLAMACPP_MODEL_PATH],
                        "object": "model",
                        "created": now,
                        "owned_by": "llamacpp",
                        "meta": {"n_ctx_train": 8192},
                    }
                ],
            }
        entry: dict[str, Any] = {
            "id": served_model,
            "object": "model",
            "created": now,
            "owned_by": self.name if self.name != "openai" else "system",
        }
        if self.name in ("vllm", "sglang"):
            entry.update(root=served_model, parent=None, max_model_len=8192)
        return {"object": "list", "data": [entry]}


_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    422: "BadRequestError",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}

FLAVORS: dict[str, Flavor] = {
    "vllm": Flavor(
        name="vllm",
        finish_on_last_token=True,
        role_content="",
        usage_per_choice=False,
        health_body=b"",
        metric_prefix="vllm",
        system_fingerprint="vllm-standin",
    ),
    "sglang": Flavor(
        name="sglang",
        finish_on_last_token=True,
        role_content="",
        usage_per_choice=False,
        health_body=b"",
        metric_prefix="sglang",
        system_fingerprint=None,
    ),
    "llamacpp": Flavor(
        name="llamacpp",
        finish_on_last_token=False,
        role_content=None,
        usage_per_choice=True,
        health_body=b'{"status":"ok"}',
        metric_prefix="llamacpp",
        system_fingerprint="b0-unknown",
    ),
    "openai": Flavor(
        name="openai",
        finish_on_last_token=False,
        role_content="",
        usage_per_choice=False,
        health_body=None,
        metric_prefix=None,
        system_fingerprint="fp_standin",
    ),
}


@dataclass
class EngineCounters:
    """Cumulative numbers the metrics endpoint reports."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    requests_ok: int = 0


def render_metrics(
    flavor: Flavor, model: str, running: int, waiting: int, aborted: int, c: EngineCounters
) -> str:
    """Prometheus text with the flavor's own metric names."""
    if flavor.name == "vllm":
        lbl = f'engine="0",model_name="{model}"'
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{lbl}}} {float(running)}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{lbl}}} {float(waiting)}",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{lbl}}} {min(1.0, running / 64):.4f}",
            "# TYPE vllm:prefix_cache_queries_total counter",
            f"vllm:prefix_cache_queries_total{{{lbl}}} {float(c.prefix_queries)}",
            "# TYPE vllm:prefix_cache_hits_total counter",
            f"vllm:prefix_cache_hits_total{{{lbl}}} {float(c.prefix_hits)}",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{lbl}}} {float(c.prompt_tokens)}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{lbl}}} {float(c.generation_tokens)}",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{{lbl},finished_reason="stop"}} {float(c.requests_ok)}',
            f'vllm:request_success_total{{{lbl},finished_reason="abort"}} {float(aborted)}',
        ]
    elif flavor.name == "sglang":
        lbl = f'model_name="{model}"'
        rate = c.prefix_hits / c.prefix_queries if c.prefix_queries else 0.0
        lines = [
            "# TYPE sglang:num_running_reqs gauge",
            f"sglang:num_running_reqs{{{lbl}}} {float(running)}",
            "# TYPE sglang:num_queue_reqs gauge",
            f"sglang:num_queue_reqs{{{lbl}}} {float(waiting)}",
            "# TYPE sglang:token_usage gauge",
            f"sglang:token_usage{{{lbl}}} {min(1.0, running / 64):.4f}",
            "# TYPE sglang:cache_hit_rate gauge",
            f"sglang:cache_hit_rate{{{lbl}}} {rate:.4f}",
            "# TYPE sglang:prompt_tokens_total counter",
            f"sglang:prompt_tokens_total{{{lbl}}} {float(c.prompt_tokens)}",
            "# TYPE sglang:cached_tokens_total counter",
            f"sglang:cached_tokens_total{{{lbl}}} {float(c.prefix_hits)}",
            "# TYPE sglang:generation_tokens_total counter",
            f"sglang:generation_tokens_total{{{lbl}}} {float(c.generation_tokens)}",
            "# TYPE sglang:num_requests_total counter",
            f"sglang:num_requests_total{{{lbl}}} {float(c.requests_ok + aborted)}",
            "# TYPE sglang:num_aborted_requests_total counter",
            f"sglang:num_aborted_requests_total{{{lbl}}} {float(aborted)}",
        ]
    else:
        lines = [
            "# TYPE llamacpp:prompt_tokens_total counter",
            f"llamacpp:prompt_tokens_total {c.prompt_tokens - c.prefix_hits}",
            "# TYPE llamacpp:prompt_tokens_cached_total counter",
            f"llamacpp:prompt_tokens_cached_total {c.prefix_hits}",
            "# TYPE llamacpp:tokens_predicted_total counter",
            f"llamacpp:tokens_predicted_total {c.generation_tokens}",
            "# TYPE llamacpp:requests_processing gauge",
            f"llamacpp:requests_processing {running}",
            "# TYPE llamacpp:requests_deferred gauge",
            f"llamacpp:requests_deferred {waiting}",
        ]
    return "\n".join(lines) + "\n"
