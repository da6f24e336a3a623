from __future__ import annotations

from typing import Any

import pytest

from gateway.config import LimitsConfig
from gateway.errors import GatewayError
from gateway.http.errors import status_of
from gateway.openai.requests import ChatCompletionRequest, CompletionRequest, parse_request

LIMITS = LimitsConfig(max_n=8, max_tokens=1000)
GOOD: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _error(body: Any, model: type = ChatCompletionRequest) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse_request(model, body, LIMITS)
    assert status_of(caught.value) == 400
    return caught.value


def test_valid_request_keeps_engine_extras() -> None:
    parsed = parse_request(ChatCompletionRequest, {**GOOD, "top_k": 5}, LIMITS)
    assert parsed.model_extra == {"top_k": 5}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"max_tokens": 1001}, "max_tokens"),
        ({"max_completion_tokens": 5000}, "max_completion_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"stream": "yes please"}, "stream"),
    ],
)
def test_invalid_field_is_named(change: dict[str, Any], param: str) -> None:
    assert _error({**GOOD, **change}).param == param


def test_missing_field_is_named() -> None:
    error = _error({"messages": GOOD["messages"]})
    assert error.param == "model"
    assert error.code == "missing_required_parameter"


def test_body_must_be_an_object() -> None:
    assert _error([1, 2]).code == "invalid_json"


def test_completion_prompt_required() -> None:
    assert _error({"model": "m"}, CompletionRequest).param == "prompt"
