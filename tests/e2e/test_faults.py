"""Faults against real processes: a llama.cpp worker killed mid-stream, and one that hangs.

Two real llama.cpp workers serve one pool behind the gateway CLI; the official ``openai`` SDK
is the client.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.processes import gateway_cli, llamacpp_worker, quiet_server

pytestmark = pytest.mark.llamacpp

MESSAGES: list[Any] = [{"role": "user", "content": "Tell a very long story about the sea."}]


@contextlib.contextmanager
def two_workers_behind_a_gateway() -> Iterator[tuple[str, dict[str, Any]]]:
    with (
        llamacpp_worker(parallel=2, context=2048) as first,
        llamacpp_worker(parallel=2, context=2048) as second,
    ):
        processes = {first[0]: first[1], second[0]: second[1]}
        config = {
            "server": quiet_server(),
            "health": {"interval_s": 1, "timeout_s": 0.5},
            "pools": [
                {
                    "name": "llama",
                    "engine": "llamacpp",
                    "model": "smollm2",
                    "workers": [{"url": first[0]}, {"url": second[0]}],
                }
            ],
        }
        with gateway_cli(config) as (url, _):
            yield url, processes


def serving_worker(gateway_url: str) -> str:
    ready = httpx.get(gateway_url + "/ready").json()
    busy = [w["url"] for w in ready["pools"][0]["workers"] if w["in_flight"]]
    assert len(busy) == 1, ready
    return str(busy[0])


def test_a_worker_killed_mid_stream_ends_its_stream_cleanly_and_the_other_takes_over() -> None:
    with two_workers_behind_a_gateway() as (url, processes):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
        stream = client.chat.completions.create(
            model="smollm2",
            messages=MESSAGES,
            max_tokens=1500,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        pieces = []
        with pytest.raises(openai.APIError) as broken:
            for chunk in stream:
                pieces.append(chunk.choices[0].delta.content if chunk.choices else "")
                if len(pieces) == 5:
                    victim = serving_worker(url)
                    processes[victim].send_signal(signal.SIGKILL)
                    killed_at = time.monotonic()
        # the SDK raises the gateway's SSE error event: a clean end, not a hung or cut stream
        assert "stream" in str(broken.value).lower() or "worker" in str(broken.value).lower()
        answer = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=4)
        served_after_s = time.monotonic() - killed_at
        assert answer.choices[0].message.content is not None
        assert served_after_s < 2.0, f"first answer {served_after_s:.2f} s after the kill"
        for _ in range(4):  # and the ones after it, while the dead worker is out of rotation
            client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
        workers = httpx.get(url + "/ready").json()["pools"][0]["workers"]
        assert {w["url"]: w["healthy"] for w in workers}[victim] is False
        assert all(w["in_flight"] == 0 for w in workers)


def test_a_hung_worker_is_a_504_within_the_deadline() -> None:
    with two_workers_behind_a_gateway() as (url, processes):
        for process in processes.values():  # both hang: nothing to fail over to
            os.kill(process.pid, signal.SIGSTOP)
        try:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as timed_out:
                client.chat.completions.create(
                    model="smollm2",
                    messages=MESSAGES,
                    max_tokens=4,
                    extra_headers={"X-TTC-Deadline-Ms": "1500"},
                )
            waited = time.monotonic() - started
            assert timed_out.value.status_code == 504
            assert 1.4 < waited < 3.0
        finally:
            for process in processes.values():
                os.kill(process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10  # health checks bring them back (interval 1 s)
        while httpx.get(url + "/ready").status_code != 200:
            assert time.monotonic() < deadline, "workers not back 10 s after SIGCONT"
            time.sleep(0.1)
        answer = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
        assert answer.choices[0].message.content is not None
