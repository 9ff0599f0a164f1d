"""`tuneserve loadtest`: error accounting, coordinated omission, payloads, reports, safety."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import wave

import httpx
import pytest

from benchmarks.targets import ERROR_CYCLE, STALL_FOR_S
from serving.loadtest.cli import is_loopback, parse_seconds
from serving.loadtest.engine import arrival_times, closed_loop, open_loop, run
from serving.loadtest.payloads import ENDPOINTS, builtin_payloads, payloads_from_file
from serving.loadtest.report import knee

from .conftest import ROOT, free_port

ROUTE = "/v1/text/classify"


def _start_target(mode: str):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "targets.py"), mode, "--port", str(port)], cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("target did not start")


@pytest.fixture
def target(request):
    proc, base = _start_target(request.param)
    yield base
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.parametrize("target", ["errors"], indirect=True)
def test_errors_are_counted_by_status(target):
    payloads = builtin_payloads("text/classify", None)
    stats = run(
        closed_loop(target + ROUTE, payloads, concurrency=1, duration_s=30, warmup_s=0, max_requests=40)
    )
    served = httpx.get(target + "/count").json()["count"]
    assert stats.completed == served == 40
    per_status = 40 // len(ERROR_CYCLE)
    assert stats.statuses == {str(s): per_status for s in ERROR_CYCLE}
    summary = stats.summary()
    assert summary["ok"] == per_status and summary["errors"] == 40 - per_status
    assert summary["error_rate"] == pytest.approx(0.75)


def test_refused_connections_are_counted_as_exceptions():
    url = f"http://127.0.0.1:{free_port()}{ROUTE}"  # nothing listens there
    stats = run(
        closed_loop(url, builtin_payloads("text/classify", None), concurrency=2, duration_s=0.5, warmup_s=0)
    )
    assert stats.completed > 0 and stats.ok == 0
    assert set(stats.exceptions) == {"ClientConnectorError"}


@pytest.mark.parametrize("target", ["stall"], indirect=True)
def test_open_loop_shows_a_stall_that_closed_loop_hides(target):
    payloads = builtin_payloads("text/classify", None)
    opened = run(
        open_loop(target + ROUTE, payloads, rate=50, duration_s=3.0, warmup_s=0, arrival="constant")
    ).summary()
    # requests meant to go out during the 1 s stall waited up to that long: the tail must show it
    assert opened["max_ms"] >= 0.9 * STALL_FOR_S * 1000
    assert opened["p99_ms"] >= 0.75 * STALL_FOR_S * 1000
    assert opened["p90_ms"] >= 0.25 * STALL_FOR_S * 1000  # ~a third of the requests were held up


@pytest.mark.parametrize("target", ["stall"], indirect=True)
def test_closed_loop_sees_the_stall_only_once(target):
    payloads = builtin_payloads("text/classify", None)
    closed = run(closed_loop(target + ROUTE, payloads, concurrency=1, duration_s=3.0, warmup_s=0)).summary()
    assert closed["max_ms"] >= 0.9 * STALL_FOR_S * 1000  # the one stalled request
    assert closed["p90_ms"] < 100  # ... hidden from every percentile below the very top


def test_arrival_processes():
    assert len(arrival_times(100, 2.0, "constant")) == 200
    poisson = arrival_times(200, 10.0, "poisson", seed=3)
    assert 1800 < len(poisson) < 2200 and poisson == sorted(poisson)
    with pytest.raises(ValueError):
        arrival_times(0, 1, "constant")


def test_builtin_payloads_for_every_endpoint():
    from PIL import Image

    for name, endpoint in ENDPOINTS.items():
        payloads = builtin_payloads(name, "some-model")
        assert len(payloads) >= 16, name
        first = payloads[0]
        if endpoint.file_field:
            ((_filename, content, ctype),) = first.files
            if ctype.startswith("image/"):  # classification's are 224², segmentation's and detection's vary
                assert min(Image.open(io.BytesIO(content)).size) >= 160, name
            else:
                with wave.open(io.BytesIO(content)) as w:
                    assert w.getframerate() == 16000 and w.getnframes() == 16000
            assert dict(first.fields)["model"] == "some-model"
        else:
            body = json.loads(first.json_body)
            assert body["model"] == "some-model"
    texts = [json.loads(p.json_body)["texts"][0] for p in builtin_payloads("text/classify", None)]
    assert len(set(texts)) == len(texts), "payloads must rotate through distinct bodies"


def test_payload_files(tmp_path):
    jsonl = tmp_path / "bodies.jsonl"
    jsonl.write_text('{"texts": ["a"]}\n\n{"texts": ["b"], "model": "x"}\n')
    bodies = [json.loads(p.json_body) for p in payloads_from_file("text/classify", jsonl, "intent")]
    assert bodies == [{"model": "intent", "texts": ["a"]}, {"texts": ["b"], "model": "x"}]
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"\x89PNG fake")
    (file,) = payloads_from_file("image/classify", tmp_path / "imgs")[0].files
    assert file[0] == "a.png" and file[2] == "image/png"
    with pytest.raises(ValueError, match="folder"):
        payloads_from_file("image/classify", jsonl)
    jsonl.write_text("{broken\n")
    with pytest.raises(ValueError, match="not JSON"):
        payloads_from_file("text/classify", jsonl)


def test_durations_knee_and_safety():
    assert (
        parse_seconds("20s") == 20
        and parse_seconds("500ms") == 0.5
        and parse_seconds("2m") == 120
        and parse_seconds("3") == 3
    )
    steps = [
        {"load": 1, "p99_ms": 10.0, "error_rate": 0.0, "throughput_rps": 100},
        {"load": 8, "p99_ms": 150.0, "error_rate": 0.0, "throughput_rps": 500},
        {"load": 32, "p99_ms": 180.0, "error_rate": 0.01, "throughput_rps": 700},
        {"load": 64, "p99_ms": 400.0, "error_rate": 0.0, "throughput_rps": 800},
    ]
    assert knee(steps, 200)["load"] == 8
    assert knee(steps, 5) is None
    assert is_loopback("http://127.0.0.1:3000") and is_loopback("http://localhost:3000")
    assert not is_loopback("http://10.0.0.1:3000")


def test_remote_target_needs_allow_remote(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "loadtest",
            "http://10.0.0.1:3000",
            "--duration",
            "1s",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--allow-remote" in out.stderr
    assert not list(tmp_path.iterdir())


def test_cli_against_the_real_served_model(server, tmp_path):
    runs = []
    for name, extra in (
        ("closed", ["--concurrency", "1,4"]),
        ("open", ["--mode", "open", "--rate", "20,40", "--slo-p99", "2s"]),
    ):
        out_dir = tmp_path / name
        cmd = [
            sys.executable,
            "-m",
            "serving",
            "loadtest",
            server,
            "--endpoint",
            "text/classify",
            "--payload",
            "intent",
            "--duration",
            "1.5s",
            "--warmup",
            "0.5s",
            "--out",
            str(out_dir),
            *extra,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        report = json.loads((out_dir / "report.json").read_text())
        assert (out_dir / "latency_vs_throughput.png").stat().st_size > 10_000
        assert "| " in (out_dir / "report.md").read_text()
        assert report["served"]["name"] == "intent" and report["machine"]["cores"] >= 1
        for step in report["steps"]:
            assert step["ok"] > 0 and step["errors"] == 0
            assert step["p50_ms"] <= step["p99_ms"] <= step["max_ms"]
            assert step["server"]["mean_batch_size"] >= 1 and step["server"]["server_requests"] >= step["ok"]
        runs.append(out_dir / "report.json")
    assert report["slo"]["knee"] is not None
    cmp = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "loadtest",
            "--compare",
            *map(str, runs),
            "--out",
            str(tmp_path / "cmp"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cmp.returncode == 0, cmp.stderr
    assert (tmp_path / "cmp" / "compare.png").exists() and "B/A" in (
        tmp_path / "cmp" / "compare.md"
    ).read_text()


@pytest.mark.parametrize(
    "endpoint,model",
    [("text/classify", "intent"), ("image/classify", "surface-defects"), ("forecast", "energy-demand")],
)
def test_cli_loads_the_open_inference_protocol_with_binary_tensors(server, tmp_path, endpoint, model):
    out_dir = tmp_path / "v2"
    cmd = [
        sys.executable,
        "-m",
        "serving",
        "loadtest",
        server,
        "--protocol",
        "v2",
        "--endpoint",
        endpoint,
        "--model",
        model,
        "--concurrency",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "0.3s",
        "--out",
        str(out_dir),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads((out_dir / "report.json").read_text())
    assert report["endpoint"] == f"/v2/models/{model}/infer"
    (step,) = report["steps"]
    assert step["ok"] > 0 and step["errors"] == 0 and step["server"]["mean_batch_size"] >= 1
