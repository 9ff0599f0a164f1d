"""The one training loop every task uses: AdamW, warmup + linear decay, gradient clipping,
early stopping on the task's metric, best checkpoint kept in memory, seeded, with a progress bar."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from training.evaluate import torch_logits
from training.recipe import TrainConfig
from training.tasks.base import Splits, Task


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class FitResult:
    best_metric: float
    best_epoch: int
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Backbone at `lr`, new layers at `head_lr`; no weight decay on biases and norms."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        is_backbone = name.startswith("backbone.")
        no_decay = param.ndim < 2
        groups.setdefault((is_backbone, no_decay), []).append(param)
    return [
        {"params": params, "lr": cfg.lr if is_backbone else cfg.head_lr, "weight_decay": 0.0 if no_decay else cfg.weight_decay}
        for (is_backbone, no_decay), params in groups.items()
    ]


def _set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    backbone = getattr(model, "backbone", None)
    if backbone is not None:
        for p in backbone.parameters():
            p.requires_grad_(not frozen)


def fit(model: nn.Module, task: Task, splits: Splits, cfg: TrainConfig, progress: bool = True) -> FitResult:
    seed_everything(cfg.seed)
    train_loader = task.loader(splits.train, shuffle=True, batch_size=cfg.batch_size)
    val_loader = task.loader(splits.val, shuffle=False, batch_size=64)
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = int(cfg.warmup_ratio * total_steps)

    optimizer = torch.optim.AdamW(_param_groups(model, cfg))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))
    )

    result = FitResult(best_metric=-math.inf, best_epoch=-1, steps=0)
    best_state: dict[str, torch.Tensor] | None = None
    epochs_without_gain = 0
    bar = tqdm(total=total_steps, desc=f"train {task.recipe.name}", unit="step", disable=not progress, dynamic_ncols=True)
    for epoch in range(cfg.epochs):
        _set_backbone_frozen(model, epoch < cfg.freeze_backbone_epochs)
        model.train()
        losses = []
        for inputs, targets in train_loader:
            if result.steps >= total_steps:
                break
            loss = task.loss(model(*inputs.values()), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            result.steps += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-20:]):.4f}", **{f"val_{task.metric}": f"{result.best_metric:.4f}" if best_state else "-"})
        logits, targets = torch_logits(model, val_loader)
        val_metric = float(task.metrics(logits, targets, splits.label_names)[task.metric])
        result.history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None, f"val_{task.metric}": val_metric})
        if val_metric > result.best_metric:
            result.best_metric, result.best_epoch = val_metric, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
            epochs_without_gain = 0
        else:
            epochs_without_gain += 1
        bar.set_postfix(epoch=epoch + 1, **{f"val_{task.metric}": f"{val_metric:.4f}", "best": f"{result.best_metric:.4f}"})
        if epochs_without_gain >= cfg.patience or result.steps >= total_steps:
            break
    bar.close()
    _set_backbone_frozen(model, False)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result
