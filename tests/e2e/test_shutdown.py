"""Graceful shutdown of ``ttc-gateway serve`` in front of a real llama.cpp worker: SIGTERM stops
new connections, lets streams in flight finish within ``server.shutdown_grace_s``, and past it
cancels them and aborts their generation on the worker."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import Any

import httpx
import pytest

from tests.processes import gateway_cli, llamacpp_pool, quiet_server

pytestmark = pytest.mark.llamacpp

MESSAGES = [{"role": "user", "content": "Tell a long story about the sea."}]


def stream_in_background(url: str, max_tokens: int) -> tuple[threading.Thread, dict[str, Any]]:
    """A streamed chat request read to its end in a thread; ``seen`` fills as it goes."""
    seen: dict[str, Any] = {"chunks": 0, "done": False, "error": None, "first": threading.Event()}

    def read() -> None:
        body = {
            "model": "smollm2",
            "messages": MESSAGES,
            "max_tokens": max_tokens,
            "stream": True,
            "ignore_eos": True,
        }
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        seen["chunks"] += 1
                        seen["first"].set()
                        seen["done"] = line == "data: [DONE]"
        except httpx.HTTPError as exc:
            seen["error"] = type(exc).__name__
        seen["first"].set()

    thread = threading.Thread(target=read)
    thread.start()
    return thread, seen


def llamacpp_processing(worker_url: str) -> float:
    text = httpx.get(worker_url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("llamacpp:requests_processing")
    )


def wait_exit(process: subprocess.Popen[bytes], timeout_s: float) -> float:
    started = time.monotonic()
    process.wait(timeout=timeout_s)
    return time.monotonic() - started


def test_sigterm_lets_a_stream_in_flight_finish_and_refuses_new_connections(
    llamacpp: tuple[str, Any],
) -> None:
    config = {"server": quiet_server(), "pools": [llamacpp_pool(llamacpp[0])]}
    with gateway_cli(config) as (url, process):
        thread, seen = stream_in_background(url, max_tokens=120)
        assert seen["first"].wait(30) and seen["error"] is None
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the signal is handled asynchronously; nothing to await across processes
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)
        thread.join(60)
        assert seen["done"] and seen["error"] is None and seen["chunks"] > 100
        assert wait_exit(process, 30) < 30


def test_past_the_grace_period_streams_are_cancelled_and_the_worker_stops(
    llamacpp: tuple[str, Any],
) -> None:
    config = {
        "server": {**quiet_server(), "shutdown_grace_s": 1},
        "pools": [llamacpp_pool(llamacpp[0])],
    }
    with gateway_cli(config) as (url, process):
        thread, seen = stream_in_background(url, max_tokens=4000)
        assert seen["first"].wait(30) and seen["error"] is None
        assert llamacpp_processing(llamacpp[0]) >= 1
        process.send_signal(signal.SIGTERM)
        assert wait_exit(process, 15) < 10  # 1 s of grace, then the stream is cancelled
        thread.join(30)
        assert not seen["done"]  # cut: it could not have finished 4,000 tokens in a second
        deadline = time.monotonic() + 3
        while llamacpp_processing(llamacpp[0]) > 0:
            assert time.monotonic() < deadline, "llama.cpp still generating after the shutdown"
            time.sleep(0.05)
