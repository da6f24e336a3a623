"""schemathesis against the gateway's own OpenAPI schema: valid and invalid bodies for every
operation, and not one 5xx. The gateway and a vLLM stand-in run as processes, as deployed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request

import pytest

from tests.processes import free_port, gateway_cli, quiet_server, stop_process, wait_http_ok

if shutil.which("schemathesis") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must install schemathesis (the test extra)")
    pytest.skip("needs schemathesis (pip install -e '.[test]')", allow_module_level=True)


def test_no_generated_request_gets_a_server_error() -> None:
    port = free_port()
    standin = subprocess.Popen(
        [sys.executable, "-m", "tests.standin", "--flavor", "vllm", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    engine = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(engine + "/health", 30, standin)
        pool = {
            "name": "fuzzed",
            "engine": "vllm",
            "model": "public-model",
            "upstream_model": "engine-model",
            "workers": [{"url": engine}],
        }
        with gateway_cli({"server": quiet_server(), "pools": [pool]}) as (url, _):
            options = {
                "--checks": "not_a_server_error",
                "--mode": "all",  # valid bodies and invalid ones
                "--max-examples": "150",
                "--workers": "1",
                "--request-timeout": "20",
            }
            run = subprocess.run(
                [
                    "schemathesis",
                    "run",
                    url + "/openapi.json",
                    "--generation-deterministic",
                    *(arg for pair in options.items() for arg in pair),
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        with urllib.request.urlopen(engine + "/standin/state") as response:
            reached = response.read()
        assert b'"requests":0' not in reached.replace(b" ", b"")  # the bodies got past 404
    finally:
        stop_process(standin)
