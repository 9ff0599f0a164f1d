"""The one training loop every task uses: AdamW, warmup + linear decay, gradient clipping and
accumulation, early stopping on the task's metric, best weights kept in memory, seeded, with a
progress bar. Optional: bf16 autocast on GPU, a checkpoint per epoch to resume from, TensorBoard
event files, a per-epoch callback (hyper-parameter search prunes trials with it), and
DistributedDataParallel when started by `torchrun` (gloo on CPU, nccl on GPU).

Under DDP each of the N processes takes 1/N of every global batch through a DistributedSampler
(so `batch_size` stays the global batch), gradients are averaged by DDP, the training loss is
averaged across processes, and every process evaluates the whole validation split (so all take
the same early-stopping decision). Only rank 0 shows progress, writes checkpoints and events.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from training.evaluate import torch_outputs
from training.recipe import TrainConfig
from training.tasks.base import Splits, Task

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- distributed ---------------------------------------------------------------------------------


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def init_distributed() -> bool:
    """Join the process group `torchrun` describes (env://); False when not under torchrun."""
    if world_size() <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def _mean_across(value: float) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _sharded(loader: DataLoader, seed: int) -> DataLoader:
    """The same data, collate and global batch size, each process taking its 1/N share."""
    n = dist.get_world_size()
    sampler: DistributedSampler[int] = DistributedSampler(
        loader.dataset, num_replicas=n, rank=dist.get_rank(), shuffle=True, seed=seed
    )
    assert loader.batch_size is not None  # task loaders batch by batch_size, not by a batch sampler
    return DataLoader(
        loader.dataset,
        batch_size=max(1, loader.batch_size // n),
        sampler=sampler,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
    )


# --- the loop ------------------------------------------------------------------------------------


@dataclass
class FitResult:
    best_metric: float
    best_epoch: int
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_epoch: int = 0


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Backbone at `lr`, new layers at `head_lr`; no weight decay on biases and norms."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        is_backbone = name.startswith("backbone.")
        no_decay = param.ndim < 2
        groups.setdefault((is_backbone, no_decay), []).append(param)
    return [
        {
            "params": params,
            "lr": cfg.lr if is_backbone else cfg.head_lr,
            "weight_decay": 0.0 if no_decay else cfg.weight_decay,
        }
        for (is_backbone, no_decay), params in groups.items()
    ]


def _set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    backbone = getattr(model, "backbone", None)
    if backbone is not None:
        for p in backbone.parameters():
            p.requires_grad_(not frozen)


def _autocast(cfg: TrainConfig):
    """bf16 autocast on a GPU when asked (`auto` or `bf16`); full precision on the CPU."""
    use = cfg.mixed_precision in ("auto", "bf16") and torch.cuda.is_available()
    return torch.autocast("cuda", dtype=torch.bfloat16) if use else torch.autocast("cpu", enabled=False)


def fit(
    model: nn.Module,
    task: Task,
    splits: Splits,
    cfg: TrainConfig,
    progress: bool = True,
    run_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train `model` in place and leave it holding the best validation weights.

    `run_dir`: where the per-epoch checkpoint (`last.pt`) and TensorBoard events go (rank 0);
    `resume`: continue from that checkpoint; `on_epoch(epoch, val_metric)`: called after each
    epoch's validation with all the task's validation metrics (may raise to stop, e.g. optuna's
    TrialPruned)."""
    seed_everything(cfg.seed)
    distributed = init_distributed()
    main = is_main_process()
    device = torch.device(
        f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        if torch.cuda.is_available() and cfg.device != "cpu"
        else "cpu"
    )
    if device.type != "cpu":
        model.to(device)
    if task.channels_last:
        model.to(memory_format=torch.channels_last)
    train_loader = task.loader(splits.train, shuffle=True, batch_size=cfg.batch_size)
    if distributed:
        train_loader = _sharded(train_loader, cfg.seed)
    val_loader = task.loader(splits.val, shuffle=False, batch_size=64)
    accum = cfg.grad_accum_steps
    steps_per_epoch = math.ceil(len(train_loader) / accum)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = int(cfg.warmup_ratio * total_steps)

    optimizer = torch.optim.AdamW(_param_groups(model, cfg))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / max(1, warmup)
            if s < warmup
            else max(0.0, (total_steps - s) / max(1, total_steps - warmup))
        ),
    )
    # frozen-backbone epochs leave parameters without gradients, which DDP must be told about
    ddp = (
        nn.parallel.DistributedDataParallel(model, find_unused_parameters=cfg.freeze_backbone_epochs > 0)
        if distributed
        else None
    )
    trained: nn.Module = ddp if ddp is not None else model

    result = FitResult(best_metric=-math.inf, best_epoch=-1, steps=0)
    best_state: dict[str, torch.Tensor] | None = None
    epochs_without_gain, start_epoch = 0, 0
    checkpoint = run_dir / CHECKPOINT if run_dir is not None else None
    if resume and checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        best_state, epochs_without_gain = state["best_state"], state["epochs_without_gain"]
        result = state["result"]
        start_epoch = result.resumed_from_epoch = state["epoch"]
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        if state.get("loader_rng") is not None and train_loader.generator is not None:
            train_loader.generator.set_state(state["loader_rng"])  # the next epoch shuffles as it would have
        log.info(
            "%s: resuming from %s after epoch %d (step %d)",
            task.recipe.name,
            checkpoint,
            start_epoch,
            result.steps,
        )
    writer = _tensorboard(run_dir) if main and run_dir is not None else None

    bar = tqdm(
        total=total_steps,
        initial=result.steps,
        desc=f"train {task.recipe.name}",
        unit="step",
        disable=not (progress and main),
        dynamic_ncols=True,
    )
    for epoch in range(start_epoch, cfg.epochs):
        if result.steps >= total_steps:
            break
        if epochs_without_gain >= cfg.patience:
            log.info(
                "%s: stopping early after epoch %d: validation %s has not improved for %d epochs",
                task.recipe.name,
                epoch,
                task.metric,
                epochs_without_gain,
            )
            break
        if distributed:
            sampler = train_loader.sampler
            assert isinstance(sampler, DistributedSampler)  # _sharded's
            sampler.set_epoch(epoch)

        _set_backbone_frozen(model, epoch < cfg.freeze_backbone_epochs)
        model.train()
        losses = []
        optimizer.zero_grad(set_to_none=True)
        for i, (inputs, targets) in enumerate(train_loader):
            if result.steps >= total_steps:
                break
            if device.type != "cpu":
                inputs, targets = (
                    {k: v.to(device) for k, v in inputs.items()},
                    task.targets_to(targets, device),
                )
            if task.channels_last:
                inputs = {k: _channels_last(v) for k, v in inputs.items()}
            last_of_step = (i + 1) % accum == 0 or i + 1 == len(train_loader)
            # under DDP, gradients are averaged across processes only on the step's last micro-batch
            sync = ddp.no_sync() if ddp is not None and not last_of_step else contextlib.nullcontext()
            with sync, _autocast(cfg):
                loss = task.loss(trained(*inputs.values()).float(), targets)
                (loss / accum).backward()
            losses.append(loss.item())
            if not last_of_step:
                continue
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps += 1
            bar.update(1)
            bar.set_postfix(
                epoch=epoch + 1,
                loss=f"{np.mean(losses[-20:]):.4f}",
                **{f"val_{task.metric}": f"{result.best_metric:.4f}" if best_state else "-"},
            )
            if writer is not None:
                writer.add_scalar("train/loss", losses[-1], result.steps)
                writer.add_scalar("train/lr", schedule.get_last_lr()[0], result.steps)
        val_outputs, val_targets = torch_outputs(
            model.cpu() if device.type != "cpu" else model, task, val_loader
        )
        if device.type != "cpu":
            model.to(device)
        val_metrics = task.metrics(val_outputs, val_targets, splits.label_names)
        val_metric = float(val_metrics[task.metric])
        train_loss = _mean_across(float(np.mean(losses))) if losses else None
        result.history.append(
            {"epoch": epoch + 1, "train_loss": train_loss, f"val_{task.metric}": val_metric}
        )
        log.debug(
            "%s: epoch %d: train loss %s, validation %s",
            task.recipe.name,
            epoch + 1,
            "-" if train_loss is None else f"{train_loss:.4f}",
            ", ".join(f"{k} {v:.4f}" for k, v in val_metrics.items() if isinstance(v, float)),
        )
        if writer is not None:
            writer.add_scalar(f"val/{task.metric}", val_metric, epoch + 1)
            if train_loss is not None:
                writer.add_scalar("train/epoch_loss", train_loss, epoch + 1)
            writer.flush()
        if val_metric > result.best_metric:
            result.best_metric, result.best_epoch = val_metric, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
            epochs_without_gain = 0
        else:
            epochs_without_gain += 1
        bar.set_postfix(
            epoch=epoch + 1,
            **{f"val_{task.metric}": f"{val_metric:.4f}", "best": f"{result.best_metric:.4f}"},
        )
        if main and checkpoint is not None:
            _save_checkpoint(
                checkpoint,
                model,
                optimizer,
                schedule,
                best_state,
                epochs_without_gain,
                result,
                epoch + 1,
                train_loader.generator.get_state() if train_loader.generator is not None else None,
            )
        if on_epoch is not None:
            on_epoch(epoch + 1, val_metrics)
    bar.close()
    if writer is not None:
        writer.close()
    if result.best_epoch > 0:
        log.info(
            "%s: best validation %s %.4f at epoch %d (%d steps)",
            task.recipe.name,
            task.metric,
            result.best_metric,
            result.best_epoch,
            result.steps,
        )
    _set_backbone_frozen(model, False)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.cpu().eval()
    if task.channels_last:  # export and parity see the usual layout
        model.to(memory_format=torch.contiguous_format)
    return result


def _channels_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor


def _save_checkpoint(
    path: Path,
    model,
    optimizer,
    schedule,
    best_state,
    epochs_without_gain: int,
    result: FitResult,
    epoch: int,
    loader_rng,
) -> None:
    """Everything to continue after an interruption, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "best_state": best_state,
            "epochs_without_gain": epochs_without_gain,
            "result": result,
            "epoch": epoch,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "loader_rng": loader_rng,
        },
        tmp,
    )
    tmp.replace(path)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: training goes on without event files in %s", run_dir)
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
