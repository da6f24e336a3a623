"""Contract tests: the gateway in front of engine stand-ins, both served in the test's loop.

Each test starts its own stand-ins (``serve_standin``) and gateway (``serve_gateway``) so it
can script them; both start in milliseconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.standin import RunningStandin, serve_standin


@pytest.fixture
async def vllm() -> AsyncIterator[RunningStandin]:
    async with serve_standin("vllm", served_model="engine-model") as standin:
        yield standin


@pytest.fixture
async def sglang() -> AsyncIterator[RunningStandin]:
    async with serve_standin("sglang", served_model="engine-model") as standin:
        yield standin


@pytest.fixture
async def llamacpp() -> AsyncIterator[RunningStandin]:
    async with serve_standin("llamacpp") as standin:
        yield standin
