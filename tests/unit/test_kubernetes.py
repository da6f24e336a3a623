"""deploy/k8s: the kustomizations render (``kubectl kustomize``), every object validates against
the Kubernetes schemas offline (``kubernetes-validate``), and the pieces refer to each other:
Service to pod ports, Redis URL to the Redis Service, discovery to the headless Service."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = ["base", "overlays/vllm", "overlays/sglang"]
KUBERNETES_VERSION = "1.30.0"  # the oldest release still in common service we check against

if shutil.which("kubectl") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must install Debian's kubectl (see .ci/run)")
    pytest.skip("needs kubectl (apt install kubectl) for kustomize", allow_module_level=True)


def render(kustomization: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S / kustomization)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates_against_the_kubernetes_schemas(kustomization: str) -> None:
    import kubernetes_validate

    docs = render(kustomization)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {"ServiceMonitor", "StatefulSet", "ConfigMap"} <= kinds
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no upstream schema offline; checked by hand below
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_services_monitors_and_the_redis_url_point_at_what_exists(kustomization: str) -> None:
    docs = render(kustomization)
    services = by_kind(docs, "Service")
    pods = {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}
    for name, service in services.items():
        selected = [
            p
            for p in pods.values()
            if service["spec"]["selector"].items()
            <= p["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert selected, f"Service {name} selects no pods"
        port_names = {
            port["name"]
            for p in selected
            for c in p["spec"]["template"]["spec"]["containers"]
            for port in c.get("ports", ())
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (name, port)
    gateway = pods["ttc-gateway"]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in gateway["containers"][0]["env"]}
    host_port = env["REDIS_URL"].split("//", 1)[1].split("/", 1)[0]
    redis_host, redis_port = host_port.split(":")
    assert int(redis_port) in {p["port"] for p in services[redis_host]["spec"]["ports"]}
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    monitored = services["ttc-gateway"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= monitored["metadata"]["labels"].items()
    )
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in monitored["spec"]["ports"]
    }
    config_maps = by_kind(docs, "ConfigMap")
    (volume,) = [v for v in gateway["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] in config_maps  # the generated name, hash included


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_gateway_configuration_loads_and_discovers_the_headless_service(
    kustomization: str, tmp_path: Path
) -> None:
    docs = render(kustomization)
    (config_map,) = by_kind(docs, "ConfigMap").values()
    path = tmp_path / "gateway.yaml"
    path.write_text(config_map["data"]["gateway.yaml"])
    settings = load_settings(path)
    assert settings.server.host == "0.0.0.0"
    grace = settings.server.shutdown_grace_s
    pod = by_kind(docs, "Deployment")["ttc-gateway"]["spec"]["template"]["spec"]
    assert grace < pod["terminationGracePeriodSeconds"]  # the gateway drains before SIGKILL
    services = by_kind(docs, "Service")
    for pool in settings.pools:
        if pool.discovery is None:
            continue
        headless = services[pool.discovery.host]["spec"]
        assert headless["clusterIP"] == "None"
        assert pool.discovery.port in {p["port"] for p in headless["ports"]}
    assert kustomization == "base" or any(p.discovery for p in settings.pools)


def test_the_clusters_price_book_is_the_repository_one() -> None:
    assert filecmp.cmp(
        K8S / "base" / "prices.yaml", REPO / "gateway" / "defaults" / "prices.yaml", False
    )
