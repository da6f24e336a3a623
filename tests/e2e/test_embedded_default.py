"""``ttc-gateway serve`` with no configuration: the README's first command."""

from __future__ import annotations

import signal
import socket

import openai
import pytest

from gateway.metering.meter import load_price_book
from gateway.openai.chunks import Usage
from tests.processes import gateway_cli

pytestmark = pytest.mark.llamacpp


def _port_open(url: str) -> bool:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def test_serve_without_configuration_runs_the_embedded_worker_and_stops_cleanly() -> None:
    with gateway_cli(None) as (url, process):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct"]
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
        )
        answer = raw.parse()
        assert answer.choices[0].message.content
        # Started outside any checkout (gateway_cli runs it in a temporary directory), it
        # prices with the packaged price book: every cost was 0 here before.
        usage = answer.usage
        assert usage is not None
        details = usage.prompt_tokens_details
        cached = details.cached_tokens if details is not None else None
        price = load_price_book(None).cost(
            "smollm2-135m-instruct",
            Usage(usage.prompt_tokens, usage.completion_tokens, cached),
        )
        assert price > 0
        assert float(raw.headers["X-TTC-Cost-USD"]) == pytest.approx(price, rel=1e-6)
        # and the first answer after start is valued in joules (it said 0)
        assert float(raw.headers["X-TTC-Energy-J"]) > 0
        worker_url = client._client.get(url + "/ready").json()["pools"][0]["workers"][0]["url"]
        assert _port_open(worker_url)
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=20) == 0
        log = process.stdout.read().decode() if process.stdout else ""
    assert "listening on http://127.0.0.1:" in log
    assert "1/1 workers ready" in log
    assert "ttc-gateway stopped" in log
    assert not _port_open(worker_url), "the embedded llama.cpp worker outlived the gateway"
