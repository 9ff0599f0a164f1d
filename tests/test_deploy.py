"""Deployment files: the Kubernetes manifests validate against a named Kubernetes version, use only
the runtime knobs the server reads, and request the memory the startup benchmark measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from serving.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"


def _docs() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_manifests_validate_strictly():
    docs = _docs()
    assert {d["kind"] for d in docs} == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
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

    request, limit = (
        size(container["resources"]["requests"]["memory"]),
        size(container["resources"]["limits"]["memory"]),
    )
    assert request >= 1.5 * rss  # headroom over the measured worker at start
    soak = ROOT / "benchmarks" / "results" / "soak.json"
    if soak.is_file():  # and over the most it held under mixed load
        peak = max(m for _, m in json.loads(soak.read_text())["memory"])
        assert request >= 1.15 * peak and limit >= 1.5 * peak


# --- KServe ------------------------------------------------------------------------------------

KSERVE = ROOT / "deploy" / "kserve" / "tuneserve.yaml"


def _api_errors(value, type_name: str, where: str) -> list[str]:
    """Where `value` does not fit the named API type of the kserve SDK or the Kubernetes client
    (both generated from the OpenAPI schemas of the CRDs and the Kubernetes API): unknown fields,
    wrong kinds of values."""
    import kserve
    import kubernetes.client

    primitives = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    for generic, plain in (("List[", "list["), ("Dict[", "dict(")):  # the Kubernetes client spells them so
        if type_name.startswith(generic):
            type_name = plain + type_name[len(generic) : -1] + ("]" if plain == "list[" else ")")
    if type_name in primitives:
        return (
            []
            if isinstance(value, primitives[type_name])
            and not (type_name != "bool" and isinstance(value, bool))
            else [f"{where}: expected {type_name}, got {value!r}"]
        )
    if type_name == "object":
        return []
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [
            e for i, item in enumerate(value) for e in _api_errors(item, type_name[5:-1], f"{where}[{i}]")
        ]
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        inner = type_name[5:-1].split(", ", 1)[1]
        return [e for k, item in value.items() for e in _api_errors(item, inner, f"{where}.{k}")]
    cls = getattr(kserve, type_name, None) or getattr(kubernetes.client, type_name)
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} object"]
    fields = {json_name: cls.openapi_types[attr] for attr, json_name in cls.attribute_map.items()}
    errors = [f"{where}.{key}: not a field of {type_name}" for key in value if key not in fields]
    return errors + [
        e
        for key, item in value.items()
        if key in fields
        for e in _api_errors(item, fields[key], f"{where}.{key}")
    ]


def api_errors(checks: list[tuple[dict, str]]) -> list[list[str]]:
    """`_api_errors` of each (document, type) in a fresh interpreter: importing kserve registers the
    protocol's protobuf messages, which tritonclient (imported by other test modules) registered in
    this process already under the same names."""
    code = (
        "import json, sys; from tests.test_deploy import _api_errors; "
        "print(json.dumps([_api_errors(d, t, d.get('kind', t)) for d, t in json.load(sys.stdin)]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(checks),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_kserve_manifests_fit_kserves_api_and_use_the_v2_protocol():
    docs = [d for d in yaml.safe_load_all(KSERVE.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServingRuntime", "InferenceService"}
    assert api_errors(
        [
            (kinds["ServingRuntime"], "V1alpha1ServingRuntime"),
            (kinds["InferenceService"], "V1beta1InferenceService"),
        ]
    ) == [[], []]
    runtime, service = kinds["ServingRuntime"]["spec"], kinds["InferenceService"]
    assert (
        service["apiVersion"] == "serving.kserve.io/v1beta1"
        and kinds["ServingRuntime"]["apiVersion"] == "serving.kserve.io/v1alpha1"
    )
    assert (
        runtime["protocolVersions"] == ["v2"]
        and service["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    )
    assert service["spec"]["predictor"]["model"]["runtime"] == kinds["ServingRuntime"]["metadata"]["name"]
    (container,) = runtime["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert {e["name"] for e in container["env"] if e["name"].startswith(ENV_PREFIX)} <= known


def test_the_api_check_catches_what_kserve_would_refuse():
    doc = yaml.safe_load(KSERVE.read_text().split("---")[1])
    doc["spec"]["predictor"]["model"]["protocolVersoin"] = "v2"
    doc["spec"]["predictor"]["minReplicas"] = "one"
    (errors,) = api_errors([(doc, "V1beta1InferenceService")])
    assert any("protocolVersoin: not a field" in e for e in errors) and any(
        "minReplicas: expected int" in e for e in errors
    )
