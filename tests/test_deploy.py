"""Deployment files: the Kubernetes manifests validate against a named Kubernetes version, use only
the runtime knobs the server reads, and request the memory the startup benchmark measured."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest

from serving.settings import ENV_PREFIX, Settings
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"


def _docs() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_manifests_validate_strictly():
    docs = _docs()
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_probes_knobs_and_resources_match_the_server():
    deployment = next(d for d in _docs() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    for env in container["env"]:
        if env["name"].startswith("TUNESERVE_"):
            assert env["name"] in known, f"{env['name']} is not read by the server"
    startup = ROOT / "benchmarks" / "results" / "startup.json"
    if not startup.is_file():
        pytest.skip("no startup benchmark result")
    rss = json.loads(startup.read_text())["max_worker_rss_bytes"]
    units = {"Mi": 2**20, "Gi": 2**30}
    def size(text: str) -> int:
        return int(text[:-2]) * units[text[-2:]]

    request, limit = size(container["resources"]["requests"]["memory"]), size(container["resources"]["limits"]["memory"])
    assert request >= 1.5 * rss  # headroom over the measured worker at start
    soak = ROOT / "benchmarks" / "results" / "soak.json"
    if soak.is_file():  # and over the most it held under mixed load
        peak = max(m for _, m in json.loads(soak.read_text())["memory"])
        assert request >= 1.15 * peak and limit >= 1.5 * peak
