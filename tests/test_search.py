"""Hyper-parameter search: a real optuna study over the diagnosis recipe's space."""

from __future__ import annotations

import yaml

from serving.manifest import load_manifest
from training.cli import load_params, main
from training.recipe import load_recipe
from training.search import search


def test_search_resumes_writes_best_overlay_and_train_accepts_it(tmp_path):
    recipe = load_recipe("diagnosis").with_overrides({"search.epochs": 6})
    out = tmp_path / "study"
    first = search(recipe, trials=3, sampler="random", out_dir=out, quiet=True)
    assert first.trials == 3 and first.default_value is not None and first.best_value >= first.default_value
    again = search(recipe, trials=5, sampler="tpe", out_dir=out, quiet=True)  # the same study, continued
    assert again.trials == 5
    for name in ("study.db", "results.md", "best.yaml", "history.png", "importance.png"):
        assert (out / name).stat().st_size > 0, name
    text = (out / "results.md").read_text()
    assert "(defaults)" in text and text.count("\n| ") >= 6
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert set(best) == set(recipe.search.space) and best == again.best_params
    assert load_params(str(out / "best.yaml")) == best
    assert main(["train", "diagnosis", "--params", str(out / "best.yaml"), "--epochs", "3", "--no-quantise", "--no-gate",
                 "--repository", str(tmp_path / "repo")]) == 0
    built = load_manifest(tmp_path / "repo" / "diagnosis").recipe["train"]
    assert built["lr"] == best["train.lr"] and built["batch_size"] == best["train.batch_size"] and built["epochs"] == 3


def test_grid_sampler_walks_the_declared_grid(tmp_path):
    recipe = load_recipe("diagnosis").with_overrides({"search.epochs": 2})
    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True, "grid": [1e-3, 1e-2]},
             "train.batch_size": {"type": "categorical", "choices": [32, 64]}}
    recipe = recipe.with_overrides({"search.space": space})
    result = search(recipe, trials=10, sampler="grid", out_dir=tmp_path / "grid", quiet=True)
    assert result.trials == 4  # 2 × 2 points, however many trials were allowed


def test_nested_params_overlay(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  lr: 0.001\n  epochs: 2\npreprocessing:\n  augment_strength: 0.5\n")
    assert load_params(str(path)) == {"train.lr": 0.001, "train.epochs": 2, "preprocessing.augment_strength": 0.5}
