"""Hyper-parameter search: a real optuna study over the diagnosis recipe's space."""

from __future__ import annotations

import optuna
import pytest
import yaml

from serving.manifest import load_manifest
from training.cli import load_params, main
from training.recipe import load_recipe
from training.search import search


def test_search_resumes_writes_best_overlay_and_train_accepts_it(tmp_path):
    recipe = load_recipe("diagnosis").with_overrides({"search.epochs": 6})
    out = tmp_path / "study"
    first = search(recipe, trials=3, sampler="random", out_dir=out, quiet=True)
    assert first.trials == 3
    study = optuna.load_study(study_name=recipe.name, storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # the first trial runs the recipe's own values, and its score is the reported default
    (defaults,) = [t for t in study.trials if t.user_attrs.get("defaults")]
    assert defaults.number == 0 and defaults.params == {
        key: _value(recipe, key) for key in recipe.search.space
    }
    assert first.default_value == defaults.value
    # a trial scores its best validation epoch; the search reports the best trial
    assert all(
        t.value == max(t.intermediate_values.values()) and len(t.intermediate_values) >= 1 for t in complete
    )
    assert first.best_value == max(t.value for t in complete) and first.best_params == study.best_trial.params
    assert (
        len({tuple(sorted(t.params.items())) for t in study.trials}) == 3
    )  # the random sampler moved off the defaults
    again = search(recipe, trials=5, sampler="tpe", out_dir=out, quiet=True)  # the same study, continued
    assert again.trials == 5
    for name in ("study.db", "results.md", "best.yaml", "history.png", "importance.png"):
        assert (out / name).stat().st_size > 0, name
    text = (out / "results.md").read_text()
    assert "(defaults)" in text and text.count("\n| ") >= 6
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert set(best) == set(recipe.search.space) and best == again.best_params
    assert load_params(str(out / "best.yaml")) == best
    assert (
        main(
            [
                "train",
                "diagnosis",
                "--params",
                str(out / "best.yaml"),
                "--epochs",
                "3",
                "--no-quantise",
                "--no-gate",
                "--repository",
                str(tmp_path / "repo"),
            ]
        )
        == 0
    )
    built = load_manifest(tmp_path / "repo" / "diagnosis").recipe["train"]
    assert (
        built["lr"] == best["train.lr"]
        and built["batch_size"] == best["train.batch_size"]
        and built["epochs"] == 3
    )


def _value(recipe, dotted: str):
    node = recipe.model_dump()
    for key in dotted.split("."):
        node = node[key]
    return node


def test_space_keys_must_be_recipe_values_or_the_tasks_preprocessing_keys(tmp_path):
    recipe = load_recipe("diagnosis")
    typo = recipe.with_overrides(
        {"search.space": {"preprocessing.augment_strenght": {"type": "float", "low": 0.0, "high": 1.0}}}
    )
    with pytest.raises(
        ValueError, match="not a preprocessing key of tabular-classification: augment_strength, "
    ):
        search(typo, trials=1, out_dir=tmp_path / "typo", quiet=True)
    with pytest.raises(ValueError, match=r"'train\.lrr' is not a value"):
        search(
            recipe.with_overrides(
                {"search.space": {"train.lrr": {"type": "float", "low": 0.1, "high": 1.0}}}
            ),
            trials=1,
            out_dir=tmp_path / "x",
            quiet=True,
        )


def test_grid_sampler_walks_the_declared_grid(tmp_path):
    recipe = load_recipe("diagnosis").with_overrides({"search.epochs": 2})
    space = {
        "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True, "grid": [1e-3, 1e-2]},
        "train.batch_size": {"type": "categorical", "choices": [32, 64]},
    }
    recipe = recipe.with_overrides({"search.space": space})
    result = search(recipe, trials=10, sampler="grid", out_dir=tmp_path / "grid", quiet=True)
    assert result.trials == 4  # 2 × 2 points, however many trials were allowed


def test_nested_params_overlay(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  lr: 0.001\n  epochs: 2\npreprocessing:\n  augment_strength: 0.5\n")
    assert load_params(str(path)) == {
        "train.lr": 0.001,
        "train.epochs": 2,
        "preprocessing.augment_strength": 0.5,
    }
