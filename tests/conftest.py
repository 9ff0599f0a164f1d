"""Shared fixtures: a tiny `intent` model trained in the session, and a real BentoML server over it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serving.loadtest.ready import wait_ready

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_defects_overrides(images: Path) -> dict:
    """The surface-defects recipe on a small generated image folder, trained for two steps."""
    return {
        "data.source": str(images),
        "preprocessing.resize_shorter": 72,
        "preprocessing.crop": 64,
        "train.epochs": 1,
        "train.max_steps": 2,
        "train.batch_size": 8,
        "train.freeze_backbone_epochs": 0,
        "gates.min_test_metric": 0.0,
    }


def tiny_scenes_overrides(scenes: Path) -> dict:
    """A dense image recipe (defect-segmentation, defect-detection) on a few generated scenes,
    letterboxed to 64 px, trained for two steps."""
    return {
        "data.source": str(scenes),
        "preprocessing.size": 64,
        "train.epochs": 1,
        "train.max_steps": 2,
        "train.batch_size": 8,
        "quantise.calibration_size": 16,
        "gates.min_test_metric": 0.0,
    }


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory) -> Path:
    """The intent recipe trained for a few steps on a slice: real pipeline, small and fast.
    TINY_REPOSITORY=DIR reuses one built by an earlier session (quicker while working on serving)."""
    if os.environ.get("TINY_REPOSITORY"):
        return Path(os.environ["TINY_REPOSITORY"])
    from training.data.surface_defects import generate_surface_defects
    from training.pipeline import build, build_recipe
    from training.recipe import load_recipe

    repo = tmp_path_factory.mktemp("exported")
    recipe = load_recipe("intent").with_overrides(
        {
            "data.limit": 300,
            "train.epochs": 1,
            "train.max_steps": 12,
            "train.freeze_backbone_epochs": 0,
            "gates.min_test_metric": 0.0,
        }
    )
    build_recipe(recipe, repo, quiet=True)
    recipe = load_recipe("entities").with_overrides(
        {"data.limit": 400, "train.epochs": 1, "train.max_steps": 12, "gates.min_test_metric": 0.0}
    )
    build_recipe(recipe, repo, quiet=True)
    recipe = load_recipe("faq-search").with_overrides(
        {
            "data.limit": 64,
            "train.epochs": 1,
            "train.max_steps": 3,
            "train.batch_size": 16,
            "quantise.calibration_size": 32,
            "gates.min_test_metric": 0.0,
        }
    )
    build_recipe(recipe, repo, quiet=True)
    from training.data.keywords import generate_keyword_clips

    clips = generate_keyword_clips(tmp_path_factory.mktemp("clips"), per_label=14, seed=2)
    recipe = load_recipe("keywords").with_overrides(
        {
            "data.source": str(clips),
            "train.epochs": 1,
            "train.max_steps": 2,
            "train.batch_size": 16,
            "quantise.calibration_size": 32,
            "gates.min_test_metric": 0.0,
        }
    )
    build(recipe, repo, quiet=True)
    images = generate_surface_defects(tmp_path_factory.mktemp("defects"), per_class=10, size=96, seed=3)
    recipe = load_recipe("surface-defects").with_overrides(
        {
            **tiny_defects_overrides(images),
            "quantise.calibration_size": 16,
        }
    )
    build_recipe(recipe, repo, quiet=True)
    from training.data.defect_scenes import generate_defect_scenes

    scenes = generate_defect_scenes(tmp_path_factory.mktemp("scenes"), count=30, seed=3)
    for name in ("defect-segmentation", "defect-detection"):
        build_recipe(load_recipe(name).with_overrides(tiny_scenes_overrides(scenes)), repo, quiet=True)
    for name, overrides in {
        "credit-risk": {"data.limit": 3000, "train.epochs": 2},
        "diagnosis": {"train.epochs": 3},
        "energy-demand": {
            "data.limit": 1500,
            "train.epochs": 1,
            "pretrain.series": 16,
            "pretrain.windows_per_series": 4,
            "pretrain.epochs": 1,
        },
    }.items():
        build_recipe(
            load_recipe(name).with_overrides({**overrides, "gates.min_test_metric": 0.0}), repo, quiet=True
        )
    build_recipe(
        load_recipe("card-fraud").with_overrides(tiny_fraud_overrides(repo.parent)), repo, quiet=True
    )
    from training.importer import import_rapidocr

    import_rapidocr("ocr", repo)  # imported, not trained: the wheel is downloaded once into the data cache
    return repo


def tiny_fraud_overrides(folder: Path) -> dict:
    """card-fraud on a small stream (400 cards, 30 days, 2% fraud) for a couple of epochs."""
    from training.data.tables import write_csv
    from training.data.transactions import generate_card_transactions

    stream = write_csv(
        folder / "card-transactions-small.csv",
        generate_card_transactions(cards=400, days=30, seed=3, fraud_rate=0.02),
    )
    return {
        "data.source": str(stream),
        "train.epochs": 2,
        "preprocessing.anomaly_epochs": 2,
        "preprocessing.alert_rate": 0.03,
        "gates.min_test_metric": 0.0,
    }


class RunningServer:
    """A `bentoml serve` process started by `start_server`: its base URL, process and log file."""

    def __init__(self, url: str, proc: subprocess.Popen, log_path: Path) -> None:
        self.url, self.proc, self.log_path = url, proc, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def start_server(
    repository: Path, folder: Path, ready_timeout: float = 120, ready_path: str = "/readyz", **settings: str
):
    """`bentoml serve` on a free local port over `repository`, with extra environment `settings`
    (e.g. TUNESERVE_API_KEY="k"); `folder` holds its log and its own BENTOML_HOME (BentoML wipes
    the Prometheus files there when a server starts). Returns once `ready_path` answers 200 (use
    /livez for a server that is up but not ready). Stopped with SIGTERM on exit."""
    port = free_port()
    log_path = folder / "server.log"
    env = dict(
        os.environ,
        TUNESERVE_REPOSITORY=str(repository),
        TUNESERVE_MAX_WAIT_MS="5",
        BENTOML_HOME=str(folder / "bentoml_home"),
    )
    env.update(settings)
    bentoml = Path(sys.executable).with_name("bentoml")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(bentoml), "serve", "serving.service:TuneServe", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_ready(server.url + ready_path, proc, ready_timeout, log_path=log_path)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server(tiny_repository, tmp_path_factory):
    """`bentoml serve` on a free local port, serving the tiny repository (shared by the session)."""
    with start_server(tiny_repository, tmp_path_factory.mktemp("server")) as running:
        yield running.url


def series_manifest(name: str, window: int, horizon: int, preprocessing: dict, **variants: str):
    """A forecaster's manifest for a hand-made graph: `history` [batch, window] → `quantiles`
    [batch, horizon, 3]; `variants`: precision → file (fp32 first; a GPU gets fp16 where listed)."""
    from serving.manifest import Manifest, Signature, TensorSpec, Variant

    return Manifest(
        name=name,
        version="1",
        task="forecasting",
        modality="series",
        base_model="test",
        labels=["p10", "p50", "p90"],
        signature=Signature(
            inputs=[TensorSpec(name="history", dtype="float32", shape=["batch", window])],
            outputs=[TensorSpec(name="quantiles", dtype="float32", shape=["batch", horizon, 3])],
        ),
        preprocessing=preprocessing,
        variants={p: Variant(file=f, precision=p) for p, f in variants.items()},
        default_variant={"cpu": "fp32", "gpu": "fp16" if "fp16" in variants else "fp32"},
    )
