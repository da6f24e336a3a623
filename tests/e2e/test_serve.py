"""``ttc-gateway serve`` as an operator runs it: several processes, a port already in use,
``--version``. Real llama.cpp behind the real CLI."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import __version__
from tests.processes import gateway_cli, llamacpp_pool

pytestmark = pytest.mark.llamacpp

REQUESTS = 40


def _counter(text: str, name: str, **labels: str) -> float:
    """The sum of a counter's series whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_several_processes_export_summed_counters_and_all_log(llamacpp: tuple[str, Any]) -> None:
    """``server.workers: 2``: whichever process answers a scrape, ttc_requests_total is the
    number of requests all of them served (each process exported only its own, so successive
    scrapes read 1, then 5: resets to Prometheus), and both write access lines."""
    worker, _ = llamacpp
    config = {"server": {"log_level": "info", "workers": 2}, "pools": [llamacpp_pool(worker)]}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "gateway.log"
        with gateway_cli(config, log=log) as (gateway, _):

            async def traffic() -> list[float]:
                body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]}

                async def one(i: int) -> int:
                    # a connection of its own each, so the kernel spreads them over processes
                    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
                        answer = await client.post(
                            "/v1/chat/completions",
                            json={**body, "max_tokens": 2},
                            headers={"X-Request-Id": f"multi-{i}"},
                        )
                        return answer.status_code

                statuses = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
                assert statuses == [200] * REQUESTS
                seen = []
                for _ in range(6):  # scrapes land on either process
                    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
                        page = (await client.get("/metrics")).text
                    seen.append(_counter(page, "ttc_requests_total", status="200"))
                return seen

            seen = asyncio.run(traffic())
        text = log.read_text()
    assert seen == [REQUESTS] * 6, seen
    access = [line for line in text.splitlines() if "ttc.access" in line and "multi-" in line]
    assert len(access) == REQUESTS
    pids = {re.search(r"\[(\d+)\]", line).group(1) for line in access}  # type: ignore[union-attr]
    assert len(pids) == 2, pids
    assert "2 processes" in text


def test_a_port_in_use_is_an_error_and_never_announced_as_listening(
    llamacpp: tuple[str, Any],
) -> None:
    worker, _ = llamacpp
    with socket.socket() as taken, tempfile.TemporaryDirectory() as tmp:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Path(tmp) / "gateway.yaml"
        pool = {"name": "llama", "engine": "llamacpp", "model": "m", "workers": [{"url": worker}]}
        config.write_text(json.dumps({"pools": [pool]}))  # JSON is YAML
        for workers in ("1", "2"):
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(config),
                    "--port",
                    str(port),
                    "--workers",
                    workers,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=tmp,
            )
            output = done.stdout + done.stderr
            assert done.returncode != 0, output
            assert "listening on" not in output, output
            assert "address already in use" in output.lower(), output


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout.strip() == f"ttc-gateway {__version__}"
