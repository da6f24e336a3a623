"""Deployment files: docker-compose.yml, Prometheus configuration and rules, Grafana dashboards.

The compose services run the commands the tests run; Prometheus' files pass ``promtool``; the
dashboards and their README panel list are what ``deploy/grafana/dashboards.py`` writes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from gateway.config import load_settings
from gateway.engines.llamacpp_worker import command

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PROMETHEUS = REPO / "deploy" / "prometheus"


def _dashboards_module() -> ModuleType:
    path = REPO / "deploy" / "grafana" / "dashboards.py"
    spec = importlib.util.spec_from_file_location("dashboards", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dashboards"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_dashboards_and_their_readme_are_what_the_generator_writes() -> None:
    dashboards = _dashboards_module()
    for path, text in dashboards.expected_files().items():
        assert path.read_text() == text, f"{path} is stale: run python deploy/grafana/dashboards.py"
    files = [dashboards.DASHBOARDS / f"{d.uid}.json" for d in dashboards.ALL]
    assert dashboards.README.read_text() == dashboards.render_readme(files)
    titles = {d.title for d in dashboards.ALL}
    assert titles == {
        "ttc-gateway / Overview",
        "ttc-gateway / Strategies",
        "ttc-gateway / Cost & Energy",
        "ttc-gateway / Workers",
    }


def test_compose_llamacpp_service_runs_the_tests_worker_command() -> None:
    service = SERVICES["llamacpp"]
    assert service["command"] == command("python", 8081, host="0.0.0.0", parallel=8, context=8192)


def test_compose_gateway_runs_the_cli_with_configs_that_load() -> None:
    gateway = SERVICES["gateway"]
    assert gateway["command"][:2] == ["ttc-gateway", "serve"]  # tests: python -m gateway serve
    default_config = gateway["environment"]["TTC_CONFIG"].split(":-", 1)[1].rstrip("}")
    assert default_config == "/etc/ttc/compose.yaml"
    assert "./configs:/etc/ttc:ro" in gateway["volumes"]
    for name in ("compose.yaml", "compose-gpu.yaml"):
        settings = load_settings(REPO / "configs" / name)
        assert settings.metering.prices_file is None  # the packaged price book
        for pool in settings.pools:
            for worker in pool.workers:
                host = worker.url.split("://", 1)[1].split(":")[0]
                assert host in SERVICES, f"{name}: {worker.url} is not a compose service"
    assert {"redis", "prometheus", "grafana"} <= set(SERVICES)
    assert SERVICES["vllm"]["profiles"] == ["gpu"] and SERVICES["sglang"]["profiles"] == ["gpu"]


def test_compose_mounts_files_that_exist() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_scrapes_the_compose_services_on_their_ports() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    listening = {"gateway": "8000", "llamacpp": "8081", "vllm": "8000", "sglang": "30000"}
    for job in config["scrape_configs"]:
        for group in job["static_configs"]:
            for target in group["targets"]:
                host, port = target.split(":")
                if host in listening:
                    assert listening[host] == port, target
                else:
                    assert host == "dcgm-exporter"  # runs on each GPU node, not in compose
    assert config["rule_files"] == ["alerts.yml"]


@pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"), reason="no promtool"
)
def test_promtool_accepts_the_configuration_and_the_rules() -> None:
    for args in (
        ["check", "config", str(PROMETHEUS / "prometheus.yml")],
        ["check", "rules", str(PROMETHEUS / "alerts.yml")],
    ):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def _compose_command() -> list[str] | None:
    """``docker compose`` (v2), else Debian's ``docker-compose`` (v1, which CI installs)."""
    docker = shutil.which("docker")
    version = [docker, "compose", "version"] if docker else None
    if version and subprocess.run(version, capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(
    _compose_command() is None and not os.environ.get("CI"), reason="no Docker Compose here"
)
def test_docker_compose_config_validates() -> None:
    compose = _compose_command()
    assert compose is not None, "CI installs docker-compose (see .ci/run)"
    result = subprocess.run(
        [*compose, "-f", str(REPO / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_compose_redis_keeps_keys_and_spending_across_restarts() -> None:
    redis = SERVICES["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"])  # on a named volume
    assert "--save" not in command or command[command.index("--save") + 1] != ""


def test_the_image_can_read_every_energy_source_the_shipped_configs_name() -> None:
    """compose-gpu.yaml reads NVML: the image must install nvidia-ml-py (the nvml extra)."""
    sources = {
        worker.energy.source
        for name in ("compose.yaml", "compose-gpu.yaml")
        for pool in load_settings(REPO / "configs" / name).pools
        for worker in pool.workers
        if worker.energy is not None
    }
    assert "nvml" in sources
    install = next(
        line for line in (REPO / "Dockerfile").read_text().splitlines() if "pip install" in line
    )
    extras = install.split('".[', 1)[1].split("]", 1)[0].split(",")
    assert "nvml" in extras
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    nvml = pyproject["project"]["optional-dependencies"]["nvml"]
    assert any(dep.startswith("nvidia-ml-py") for dep in nvml)


def test_the_embedded_worker_runs_with_the_configured_threads() -> None:
    assert command("python", 1, threads=2)[-2:] == ["--threads", "2"]
    assert "--threads" not in command("python", 1)
