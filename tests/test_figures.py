"""training/figures.py: each kind of picture is a real PNG drawn from real arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import figures


def read_png(path: Path) -> np.ndarray:
    """The image as RGB pixels, after checking the file is a PNG of a plausible size."""
    assert path.is_file() and path.stat().st_size > 5_000, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 300 and height >= 200, image.size
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10, "a blank picture"
    return pixels


@pytest.mark.fast
def test_training_curves(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 1.2, "val_accuracy": 0.61},
        {"epoch": 2, "train_loss": 0.7, "val_accuracy": 0.78},
        {
            "epoch": 3,
            "train_loss": None,
            "val_accuracy": 0.74,
        },  # an epoch whose steps all ran on another rank
    ]
    path = figures.training_curves(tmp_path / "curves.png", history, "accuracy", title="intent")
    assert path == tmp_path / "curves.png"
    read_png(path)
    assert figures.training_curves(tmp_path / "none.png", [], "accuracy") is None
    assert not (tmp_path / "none.png").exists()


@pytest.mark.fast
def test_confusion_matrix_grows_with_the_classes(tmp_path):
    rng = np.random.default_rng(0)
    small = figures.confusion_matrix(tmp_path / "small.png", [[40, 2], [5, 30]], ["no", "yes"], "two")
    labels = [f"class {i}" for i in range(12)]
    matrix = rng.integers(0, 4, (12, 12)) + 25 * np.eye(12, dtype=int)
    large = figures.confusion_matrix(tmp_path / "large.png", matrix, labels, "twelve")
    assert read_png(large).shape[0] > read_png(small).shape[0]


def test_roc_pr_curves(tmp_path):  # not in the fast tier: the curves come from scikit-learn, slow to import
    rng = np.random.default_rng(1)
    positive = rng.random(400) < 0.3
    p_positive = np.clip(0.35 * positive + 0.65 * rng.random(400), 0, 1)
    read_png(figures.roc_pr_curves(tmp_path / "roc_pr.png", p_positive, positive, 0.5, "binary"))


@pytest.mark.fast
def test_backtest(tmp_path):
    rng = np.random.default_rng(2)
    hours = np.arange(24 * 60)
    series = 50 + 10 * np.sin(hours * 2 * np.pi / 24) + rng.normal(0, 1, len(hours))
    origins = np.arange(24 * 50, 24 * 60 - 24 + 1, 24)
    median = np.stack([series[o - 168 : o - 144] for o in origins])  # the same hours a week before
    quantiles = np.stack([median - 2, median, median + 2], axis=-1)
    path = figures.backtest(
        tmp_path / "backtest.png", series, origins, quantiles, naive=median, title="demand"
    )
    read_png(path)


@pytest.mark.fast
def test_misclassified_images_one_row_per_class_with_mistakes(tmp_path):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(30)]
    true = np.repeat([0, 1, 2], 10)
    names = ["ok", "scratch", "dent"]
    assert figures.misclassified_images(tmp_path / "none.png", images, true, true, names) is None
    one_class = true.copy()
    one_class[:3] = 1  # three "ok" images taken for scratches
    one = read_png(figures.misclassified_images(tmp_path / "one.png", images, true, one_class, names))
    three_classes = one_class.copy()
    three_classes[[12, 25]] = [2, 0]
    three = read_png(figures.misclassified_images(tmp_path / "three.png", images, true, three_classes, names))
    assert three.shape[0] > one.shape[0]


@pytest.mark.fast
def test_entity_f1(tmp_path):
    read_png(
        figures.entity_f1(tmp_path / "f1.png", {"PERSON": 0.81, "MONEY": 0.55, "DATE": 0.93}, "entities")
    )
