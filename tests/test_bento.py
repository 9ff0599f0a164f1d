"""The slim runtime, proven: build the Bento from the tiny repository, install its requirements (and
nothing else) into a fresh virtualenv, check torch is absent, serve the built Bento with that
environment and compare every endpoint's answers with the development server's."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.loadtest.ready import wait_ready
from serving.tasks.forecasting import sample_histories as _series
from serving.tasks.tabular import sample_rows as _rows
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture(scope="module")
def bento(tiny_repository, tmp_path_factory) -> Path:
    """`bentoml build` on a context holding serving/ and the tiny models as exported/."""
    ctx = tmp_path_factory.mktemp("bento_ctx")
    shutil.copytree(ROOT / "serving", ctx / "serving", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "bentofile.yaml", ctx / "bentofile.yaml")
    shutil.copytree(tiny_repository, ctx / "exported", ignore=shutil.ignore_patterns(".*"))
    home = tmp_path_factory.mktemp("bentoml_home")
    env = dict(os.environ, BENTOML_HOME=str(home))
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("bentoml")),
            "build",
            "-f",
            str(ctx / "bentofile.yaml"),
            str(ctx),
        ],
        cwd=ctx,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = [p for p in (home / "bentos" / "tuneserve").iterdir() if p.is_dir() and p.name != "latest"]
    return built


def test_bento_holds_serving_code_and_models_only(bento):
    src = bento / "src"
    assert (
        (src / "serving" / "service.py").is_file()
        and not (src / "training").exists()
        and not (src / "tests").exists()
    )
    assert not (src / "serving" / "loadtest").exists()
    assert not list(src.rglob("model.ts")) and not list(src.rglob("*.pt")) and not list(src.rglob("*.pt2"))
    models = {p.parent.name for p in (src / "exported").glob("*/manifest.json")}
    assert {
        "intent",
        "entities",
        "keywords",
        "surface-defects",
        "credit-risk",
        "diagnosis",
        "energy-demand",
    } <= models
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().lower()
    for heavy in ("torch", "torchvision", "timm", "transformers"):
        assert f"\n{heavy}" not in requirements and not requirements.startswith(heavy)


@pytest.fixture(scope="module")
def slim_server(bento, tmp_path_factory):
    venv = tmp_path_factory.mktemp("slim") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(bento / "env" / "python" / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    no_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0, "torch is importable in the Bento's environment"
    port = free_port()
    home = tmp_path_factory.mktemp("slim_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(
        BENTOML_HOME=str(home), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", TUNESERVE_MAX_WAIT_MS="5"
    )
    log = tmp_path_factory.mktemp("slim_log") / "server.log"
    with open(log, "w") as fh:  # serve the built Bento's folder with the slim environment
        proc = subprocess.Popen(
            [str(venv / "bin" / "bentoml"), "serve", str(bento), "--host", "127.0.0.1", "--port", str(port)],
            cwd=bento / "src",
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/readyz", proc, 180, log_path=log)
    yield url, venv
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def _requests() -> list[tuple[str, dict]]:
    """One request per endpoint the tiny models offer: (route, httpx kwargs)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    image = io.BytesIO()
    import cv2

    _ok, png = cv2.imencode(".png", rng.integers(0, 255, (80, 80, 3), dtype=np.uint8))
    image.write(png.tobytes())
    wav = io.BytesIO()
    sf.write(wav, (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000, format="WAV")
    return [
        (
            "/v1/text/classify",
            {"json": {"model": "intent", "texts": ["I lost my card", "what is my balance"]}},
        ),
        (
            "/v1/text/entities",
            {"json": {"model": "entities", "texts": ["Send $25 to Maria Lopez in Denver"]}},
        ),
        (
            "/v1/image/classify",
            {
                "files": [("images", ("a.png", image.getvalue(), "image/png"))],
                "data": {"model": "surface-defects"},
            },
        ),
        (
            "/v1/audio/classify",
            {"files": [("audio", ("a.wav", wav.getvalue(), "audio/wav"))], "data": {"model": "keywords"}},
        ),
        ("/v1/tabular/predict", {"json": {"model": "credit-risk", "rows": _rows(5)}}),
        ("/v1/forecast", {"json": {"model": "energy-demand", "history": _series(1)[0], "horizon": 6}}),
    ]


def _close(a, b, path="") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def test_slim_bento_answers_like_the_development_server(server, slim_server):
    slim_url, _venv = slim_server
    for route, kwargs in _requests():
        full = httpx.post(server + route, timeout=60, **kwargs)
        slim = httpx.post(slim_url + route, timeout=60, **kwargs)
        assert full.status_code == slim.status_code == 200, (route, full.text[:300], slim.text[:300])
        _close(full.json(), slim.json(), route)


def test_slim_environment_is_a_fraction_of_the_development_one(slim_server):
    _, venv = slim_server
    slim = _du(venv)
    dev = _du(Path(sys.prefix))
    ratio = slim / dev
    print(json.dumps({"slim_bytes": slim, "dev_bytes": dev, "ratio": ratio}))
    assert ratio <= 0.25, f"slim environment is {ratio:.0%} of the development environment"
