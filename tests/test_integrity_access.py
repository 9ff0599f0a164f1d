"""Integrity, access and limits against real servers: refused model folders, /readyz policy, hot
reload without dropping requests, the API key, the body limit before the body is read."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving.manifest import load_manifest
from tests.conftest import start_server

TEXT = {"texts": ["I lost my card, please block it", "what is my balance"]}
KEY = "s3cret-key"


def _served_file(model_dir: Path) -> Path:
    manifest = load_manifest(model_dir, verify=False)
    return model_dir / manifest.variants[manifest.variant_for("cpu")].file


def _rehash(model_dir: Path, rel: str) -> None:
    """Make the manifest agree with a file changed on purpose (so ONNX Runtime, not the hash, meets it)."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    data = (model_dir / rel).read_bytes()
    manifest["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="module")
def damaged_repository(tiny_repository, tmp_path_factory) -> Path:
    """intent and credit-risk intact; three folders damaged three ways."""
    repo = tmp_path_factory.mktemp("damaged") / "repo"
    repo.mkdir()
    for name in ("intent", "credit-risk", "diagnosis", "energy-demand", "entities"):
        shutil.copytree(tiny_repository / name, repo / name)
    # 1. a byte flipped in the served ONNX file: its sha256 no longer matches the manifest
    flipped = _served_file(repo / "diagnosis")
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    # 2. a truncated ONNX file the manifest vouches for: ONNX Runtime itself refuses it
    truncated = _served_file(repo / "energy-demand")
    truncated.write_bytes(truncated.read_bytes()[:300])
    _rehash(repo / "energy-demand", truncated.name)
    # 3. a manifest that does not parse
    (repo / "entities" / "manifest.json").write_text('{"name": "entities", "task": ')
    return repo


@pytest.fixture(scope="module")
def guarded(damaged_repository, tmp_path_factory):
    """A server over the damaged repository with an API key, a 1 MB body limit and the `any` policy."""
    with start_server(
        damaged_repository,
        tmp_path_factory.mktemp("guarded"),
        TUNESERVE_API_KEY=KEY,
        TUNESERVE_MAX_BODY_MB="1",
        TUNESERVE_READY_POLICY="any",
    ) as running:
        yield running


def _auth(kind: str = "bearer", key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if kind == "bearer" else {"X-API-Key": key}


def test_damaged_models_are_refused_and_the_rest_serve(guarded):
    body = httpx.get(guarded.url + "/v1/models", headers=_auth()).json()
    assert sorted(m["name"] for m in body["models"]) == ["credit-risk", "intent"]
    refused = body["refused"]
    assert set(refused) == {"diagnosis", "energy-demand", "entities"}
    assert "sha256" in refused["diagnosis"]
    assert "invalid manifest" in refused["entities"]
    assert refused["energy-demand"]  # ONNX Runtime's own reason
    log = guarded.log()
    for name in refused:
        assert f"not serving {name}:" in log
    # the policy `any`: ready with two models serving
    assert httpx.get(guarded.url + "/readyz").status_code == 200
    r = httpx.post(guarded.url + "/v1/text/classify", json=TEXT, headers=_auth())
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    r = httpx.post(
        guarded.url + "/v1/tabular/predict", json={"model": "diagnosis", "rows": [{}]}, headers=_auth()
    )
    assert r.status_code == 404 and "refused at load" in r.json()["error"] and "sha256" in r.json()["error"]


def test_ready_policy_all_holds_readiness_while_a_model_is_refused(damaged_repository, tmp_path):
    with start_server(damaged_repository, tmp_path, ready_path="/livez") as running:
        assert httpx.get(running.url + "/readyz").status_code == 503
        assert httpx.get(running.url + "/livez").status_code == 200
        r = httpx.post(running.url + "/v1/text/classify", json=TEXT)
        assert r.status_code == 200  # not ready for new traffic, but what it has serves


@pytest.mark.parametrize(
    "route",
    [
        "/v1/models",
        "/v1/text/classify",
        "/v1/text/entities",
        "/v1/image/classify",
        "/v1/audio/classify",
        "/v1/tabular/predict",
        "/v1/forecast",
        "/v1/admin/reload",
        "/v1/no/such/route",
    ],
)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": "s3cret-kez"},
        {"Authorization": KEY},
        {"Authorization": "Basic czNjcmV0LWtleQ=="},
    ],
)
def test_every_v1_route_needs_the_key(guarded, route, headers):
    method = "GET" if route == "/v1/models" else "POST"
    r = httpx.request(method, guarded.url + route, json=TEXT, headers=headers)
    assert r.status_code == 401, r.text
    assert "API key" in r.json()["error"] and r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("kind", ["bearer", "x-api-key"])
def test_the_key_opens_the_routes(guarded, kind):
    r = httpx.post(guarded.url + "/v1/text/classify", json=TEXT, headers=_auth(kind))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "headers,status",
    [
        ([("X-API-Key", KEY), ("Authorization", "Bearer other")], 401),  # two different keys
        ([("X-API-Key", "other"), ("Authorization", f"Bearer {KEY}")], 401),
        ([("X-API-Key", KEY), ("X-API-Key", "other")], 401),  # one header twice, either order
        ([("X-API-Key", "other"), ("X-API-Key", KEY)], 401),
        ([("X-API-Key", ""), ("Authorization", f"Bearer {KEY}")], 200),  # empty = absent
        ([("X-API-Key", ""), ("Authorization", "Bearer")], 401),  # nothing but empty values
        ([("X-API-Key", KEY), ("Authorization", f"Bearer {KEY}")], 200),  # the same key twice
    ],
)
def test_one_key_rule_for_both_headers(guarded, headers, status):
    r = httpx.post(guarded.url + "/v1/text/classify", json=TEXT, headers=httpx.Headers(headers))
    assert r.status_code == status, r.text


@pytest.mark.parametrize("path", ["/readyz", "/livez", "/metrics", "/v1/openapi.json"])
def test_health_metrics_and_the_api_document_stay_open(guarded, path):
    assert httpx.get(guarded.url + path).status_code == 200


def test_body_over_the_limit_is_refused_before_it_is_read(guarded):
    # The headers promise 50 MB; not one byte of body follows. The 413 arrives anyway, so the server
    # answered from Content-Length alone instead of reading (or waiting for) the body.
    host, port = guarded.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            (
                f"POST /v1/text/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"X-API-Key: {KEY}\r\nContent-Length: {50 * 2**20}\r\n\r\n"
            ).encode()
        )
        started, answer = time.monotonic(), ""
        while "}" not in answer and time.monotonic() - started < 5:
            answer += sock.recv(65536).decode(errors="replace")
        assert time.monotonic() - started < 5
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "the limit is 1048576" in answer


def test_chunked_body_over_the_limit_is_cut_off(guarded):
    def chunks():
        piece = b'{"texts": ["' + b"a" * 65536
        yield piece
        for _ in range(40):  # 2.6 MB in all, more than the 1 MB limit
            yield b"a" * 65536
        yield b'"]}'

    r = httpx.post(
        guarded.url + "/v1/text/classify",
        content=chunks(),
        headers={**_auth(), "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]
    assert httpx.post(guarded.url + "/v1/text/classify", json=TEXT, headers=_auth()).status_code == 200


def test_hot_reload_swaps_a_model_without_dropping_requests(guarded, damaged_repository, tiny_repository):
    url, headers = guarded.url, _auth()
    expected = httpx.post(url + "/v1/text/classify", json=TEXT, headers=headers).json()["predictions"]
    stop, outcomes = threading.Event(), []

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(url + "/v1/text/classify", json=TEXT, headers=headers)
                outcomes.append(
                    (
                        r.status_code,
                        r.json().get("version"),
                        [p["label"] for p in r.json().get("predictions", [])],
                    )
                )

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    # A new version of `intent`, staged beside the repository and moved into place in one rename;
    # and the damaged `diagnosis` replaced by a good copy.
    staged = damaged_repository.parent / "intent.next"
    shutil.copytree(damaged_repository / "intent", staged)
    manifest = json.loads((staged / "manifest.json").read_text())
    manifest["version"] = str(manifest["version"]) + ".1"
    (staged / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (damaged_repository / "intent").rename(damaged_repository.parent / "intent.old")
    staged.rename(damaged_repository / "intent")
    shutil.rmtree(damaged_repository / "diagnosis")
    shutil.copytree(tiny_repository / "diagnosis", damaged_repository / "diagnosis")
    report = httpx.post(url + "/v1/admin/reload", headers=headers, timeout=60).json()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert any(x.startswith("intent v") and x.endswith(".1") for x in report["loaded"]), report
    assert any(x.startswith("diagnosis v") for x in report["loaded"]), report
    assert set(report["refused"]) == {"energy-demand", "entities"}
    assert all(status == 200 for status, _, _ in outcomes), [o for o in outcomes if o[0] != 200][:5]
    assert all(labels == [p["label"] for p in expected] for _, _, labels in outcomes)
    versions = [v for _, v, _ in outcomes]
    assert versions[0] == manifest["version"][:-2] and versions[-1] == manifest["version"], (
        versions[0],
        versions[-1],
    )
    body = httpx.get(url + "/v1/models", headers=headers).json()
    assert {"credit-risk", "diagnosis", "intent"} == {m["name"] for m in body["models"]}
    r = httpx.post(url + "/v1/tabular/predict", json={"model": "diagnosis", "rows": [{}]}, headers=headers)
    assert r.status_code in (200, 400), (
        r.text
    )  # served again: an empty row is the client's mistake, not an unknown model


def test_reload_is_off_without_an_api_key(server):
    r = httpx.post(server + "/v1/admin/reload")
    assert r.status_code == 403 and "TUNESERVE_API_KEY" in r.json()["error"]


def test_reload_refuses_to_unload_everything(guarded, damaged_repository):
    """A repository that is momentarily empty (a mount being replaced) must not unload every model."""
    aside = damaged_repository.parent / "aside"
    aside.mkdir()
    folders = [p for p in damaged_repository.iterdir() if p.is_dir()]
    for folder in folders:
        folder.rename(aside / folder.name)
    try:
        r = httpx.post(guarded.url + "/v1/admin/reload", headers=_auth(), timeout=60)
        assert r.status_code == 409 and "refusing to unload every model" in r.json()["error"]
    finally:
        for folder in folders:
            (aside / folder.name).rename(folder)
    r = httpx.post(guarded.url + "/v1/text/classify", json=TEXT, headers=_auth())
    assert r.status_code == 200


@pytest.mark.parametrize("top_k", ["\u00b2", "--3", "9" * 5000, "1e3"])
def test_odd_top_k_is_a_400(server, top_k):
    png = b"\x89PNG\r\n\x1a\n"
    r = httpx.post(
        server + "/v1/image/classify", files={"images": ("a.png", png, "image/png")}, data={"top_k": top_k}
    )
    assert r.status_code == 400, r.text


@pytest.mark.parametrize("charset", ["punycode", "unicode_escape", "utf-16", "rot13"])
def test_multipart_charsets_other_than_utf8_and_latin1_are_refused(server, charset):
    boundary = "XyZ"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\nnot-a-png\r\n--{boundary}--\r\n"
    ).encode()
    r = httpx.post(
        server + "/v1/image/classify",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}; charset={charset}"},
    )
    assert r.status_code == 400 and "charset" in r.json()["error"], r.text
