"""The shared training loop's conveniences: gradient accumulation, resume after an interruption,
TensorBoard events, the per-epoch callback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import tiny_defects_overrides
from training.backbones import get_backbone
from training.data.surface_defects import generate_surface_defects
from training.loop import fit
from training.recipe import load_recipe
from training.tasks import get_task


class Interrupted(Exception):
    pass


def _setup(**overrides):
    recipe = load_recipe("diagnosis").with_overrides(
        {"preprocessing.class_weight": "none", "train.dropout": 0.0, "train.patience": 99, **overrides}
    )
    task = get_task(recipe.task)(recipe, get_backbone(recipe.backbone))
    task.progress = False
    splits = task.load_data()
    splits.train = splits.train.subset(np.arange(288))  # a multiple of 32: no ragged last batch
    torch.manual_seed(0)
    return recipe, task, splits, task.build_model(splits.label_names)


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_gradient_accumulation_equals_the_larger_batch():
    recipe, task, splits, big = _setup(**{"train.epochs": 2, "train.batch_size": 32})
    fit(big, task, splits, recipe.train, progress=False)
    recipe2, task2, splits2, small = _setup(
        **{"train.epochs": 2, "train.batch_size": 16, "train.grad_accum_steps": 2}
    )
    # the same permutation of examples: batch 16 × 2 micro-batches = the same 32 examples per step
    task2.loader = lambda split, shuffle, batch_size=None: task.loader(
        split, shuffle, 16 if shuffle else batch_size
    )
    fit(small, task2, splits2, recipe2.train, progress=False)
    torch.testing.assert_close(_params(big), _params(small), rtol=1e-4, atol=1e-5)


def test_resume_after_an_interruption_ends_where_an_uninterrupted_run_ends(tmp_path):
    recipe, task, splits, whole = _setup(**{"train.epochs": 4})
    result = fit(whole, task, splits, recipe.train, progress=False, run_dir=tmp_path / "a")

    recipe, task, splits, first = _setup(**{"train.epochs": 4})

    def stop_after_two(epoch: int, metrics: dict) -> None:
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(
            first, task, splits, recipe.train, progress=False, run_dir=tmp_path / "b", on_epoch=stop_after_two
        )
    recipe, task, splits, resumed = _setup(**{"train.epochs": 4})
    again = fit(resumed, task, splits, recipe.train, progress=False, run_dir=tmp_path / "b", resume=True)
    assert again.resumed_from_epoch == 2 and [h["epoch"] for h in again.history] == [1, 2, 3, 4]
    assert again.steps == result.steps and again.best_epoch == result.best_epoch
    torch.testing.assert_close(_params(whole), _params(resumed))
    events = list((tmp_path / "a" / "tensorboard").iterdir())
    assert events and events[0].stat().st_size > 0


def test_image_training_runs_channels_last_and_hands_back_the_usual_layout(tmp_path):
    images = generate_surface_defects(tmp_path, per_class=10, size=72, seed=3)
    recipe = load_recipe("surface-defects").with_overrides(tiny_defects_overrides(images))
    task = get_task(recipe.task)(recipe, get_backbone(recipe.backbone))
    task.progress = False
    splits = task.load_data()
    model = task.build_model(splits.label_names)
    layouts: list[tuple[bool, bool]] = []  # (training, input in channels-last memory) per forward
    model.register_forward_pre_hook(
        lambda m, args: layouts.append(
            (
                m.training,
                args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous(),
            )
        )
    )
    fit(model, task, splits, recipe.train, progress=False)
    assert [cl for training, cl in layouts if training] == [True, True]  # the two training steps
    assert all(p.is_contiguous() for p in model.parameters())  # what export and parity see
