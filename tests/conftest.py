from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.processes import gateway_cli, llamacpp_pool, llamacpp_worker


@pytest.fixture(scope="session")
def llamacpp() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """One real llama.cpp worker shared by the session's end-to-end tests."""
    with llamacpp_worker() as worker:
        yield worker


@pytest.fixture(scope="session")
def gateway_on_llamacpp(llamacpp: tuple[str, Any]) -> Iterator[str]:
    """The gateway CLI serving the real llama.cpp worker as model ``smollm2``."""
    url, _ = llamacpp
    config = {"server": {"log_level": "info"}, "pools": [llamacpp_pool(url)]}
    with gateway_cli(config) as (gateway_url, _):
        yield gateway_url


@pytest.fixture
def client(gateway_on_llamacpp: str) -> openai.AsyncOpenAI:
    """The official SDK, pointed at ``gateway_on_llamacpp``."""
    return openai.AsyncOpenAI(
        base_url=gateway_on_llamacpp + "/v1", api_key="unused", max_retries=0, timeout=120
    )
