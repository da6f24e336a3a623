"""The OpenAI wire format the gateway accepts, as pydantic models in one place.

Only the fields the gateway acts on are declared and checked; anything else (engine extras such
as vLLM's ``top_k`` or ``continue_final_message``) is kept and forwarded unchanged. The ``ttc``
object is the gateway's own extension (strategy choice for clients that cannot set headers) and
is never forwarded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from gateway.config import LimitsConfig
from gateway.errors import GatewayError, invalid_request


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = Field(None, validate_default=True)

    @field_validator("content")
    @classmethod
    def _content_unless_assistant(
        cls, value: str | list[dict[str, Any]] | None, info: ValidationInfo
    ) -> str | list[dict[str, Any]] | None:
        # Only an assistant turn (one that made tool calls) may come without content.
        if value is None and info.data.get("role", "assistant") != "assistant":
            raise ValueError(f"a {info.data['role']} message needs content (a string or parts)")
        return value


class StreamOptions(_Open):
    include_usage: bool = False


class _SamplingRequest(_Open):
    model: str = Field(min_length=1)
    n: int = Field(1, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ttc: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None


MESSAGE_OVERHEAD_TOKENS = 8  # a chat template's tokens around one message (role, separators)
# ... and what it adds once: a default system prompt (SmolLM2's is ~20 tokens, Qwen's and
# Llama 3's ~25), a generation prompt.
TEMPLATE_OVERHEAD_TOKENS = 64


def prompt_token_bound(body: Mapping[str, Any]) -> int:
    """An upper bound on a request's prompt tokens: the UTF-8 bytes of its text (a BPE token
    is at least one byte), plus what a chat template adds per message and once per prompt."""
    if "prompt" in body:
        prompt = body["prompt"]
        texts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt or ()]
        return sum(len(t.encode()) for t in texts) + MESSAGE_OVERHEAD_TOKENS
    total = TEMPLATE_OVERHEAD_TOKENS
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        text = content if isinstance(content, str) else str(content or "")
        total += len(text.encode()) + MESSAGE_OVERHEAD_TOKENS
    for key in ("tools", "functions", "response_format"):
        if body.get(key):
            total += len(str(body[key]).encode())
    return total


R = TypeVar("R", bound=_SamplingRequest)


def _param_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_request(model: type[R], body: Any, limits: LimitsConfig) -> R:
    """Validate a decoded JSON body; raise ``InvalidRequest`` naming the first offending field."""
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object", code="invalid_json")
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param_path(first["loc"])
        if first["type"] == "missing":
            raise invalid_request(
                f"Missing required parameter: {param!r}",
                param=param,
                code="missing_required_parameter",
            ) from None
        raise invalid_request(f"Invalid value for {param!r}: {first['msg']}", param=param) from None
    if request.n > limits.max_n:
        raise invalid_request(
            f"n={request.n} is above this gateway's limit of {limits.max_n}", param="n"
        )
    max_tokens = request.requested_max_tokens()
    if max_tokens is not None and max_tokens > limits.max_tokens:
        field = "max_completion_tokens" if body.get("max_completion_tokens") else "max_tokens"
        raise invalid_request(
            f"{field}={max_tokens} is above this gateway's limit of {limits.max_tokens}",
            param=field,
        )
    return request


__all__ = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "GatewayError",
    "parse_request",
    "prompt_token_bound",
]
