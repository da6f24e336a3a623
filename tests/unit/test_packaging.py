"""The wheel carries what the product reads at run time: a non-editable install, used from
another directory, finds its price book, the benchmark's GSM8K problems and LiteLLM config.

(An installed wheel's benchmarks read them relative to site-packages: "cannot read dataset",
``FileNotFoundError .../site-packages/deploy/litellm/config.yaml``; costs were 0 away from a
checkout.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHECK = """
import os, tempfile
from pathlib import Path
import gateway
# the installed copy, not the checkout
assert gateway.__file__.startswith(os.environ["PYTHONPATH"]), gateway.__file__
from gateway.metering.meter import load_price_book
from gateway.bench.strategies import DEFAULT_DATASET, load_problems
from gateway.bench.overhead import _litellm_config
assert load_price_book(None).models["smollm2-135m-instruct"].output_cost_per_token > 0
problems = load_problems(DEFAULT_DATASET, 1319)
assert len(problems) == 1319 and problems[0].gold == "18", len(problems)
with tempfile.TemporaryDirectory() as tmp:
    config = _litellm_config(Path(tmp), "http://127.0.0.1:9")
    assert "http://127.0.0.1:9/v1" in config.read_text()
print("ok")
"""


def test_a_wheel_install_finds_its_data_from_any_directory(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("ttc_gateway-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), wheel],
        check=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=elsewhere,  # not the checkout: nothing resolves relative to it
        env={**env, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
