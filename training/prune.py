"""Magnitude pruning after fine-tuning, a short recovery fine-tune, and an honest before/after.

Two methods:

- **unstructured**: global L1 magnitude pruning over every Conv/Linear weight
  (`torch.nn.utils.prune.global_unstructured`); the masks stay in place during the recovery
  fine-tune, then the zeros are baked into the weights. ONNX stores those zeros densely and ONNX
  Runtime's CPU kernels multiply them like any other weight, so the file is no smaller and no
  faster — only its compressed size shrinks. The comparison says so and the model is not kept.
- **structured**: channels are removed, so the exported graph really does less work.
  `small-cnn`: output channels of each conv-BN-ReLU-pool block (the conv's filters, the BN, the next
  conv's inputs, and the head's inputs after the last block). EfficientNet-Lite0: the expanded
  hidden channels inside each inverted-residual block (conv_pw outputs + bn1, the depthwise conv_dw
  + bn2, conv_pwl inputs); block inputs and outputs keep their width, so residuals and the head are
  untouched. A channel is ranked by its spread after its BatchNorm (|γ|) times the L1 norm of the
  weights that read it downstream. The L1 norm of the producing filters says little when a
  BatchNorm follows and rescales them: with BatchNorm statistics re-estimated after removal, the
  BN-folded filter norms kept markedly less accuracy than this score on the fine-tuned
  surface-defects model and somewhat less on the keywords small CNN.
  After removal, every BatchNorm's statistics are re-estimated on training inputs (without that,
  either score left the model near chance before the recovery fine-tune).
  Kept counts are rounded to multiples of 8 where the layer has at least 16 channels: ONNX
  Runtime's CPU convs work on blocks of channels, and unaligned widths ran slower than the unpruned
  model itself, while aligned ones ran faster.
- `resize_to_state_dict` gives a freshly built task model a pruned model's widths, to load its
  weights (e.g. from the exported TorchScript file).

`prune_and_recover` measures the model before and after (decisive metric on validation and test,
parameters, non-zeros, ONNX file size, ONNX Runtime CPU ms per batch of 8) and keeps the pruned
model only if the validation metric drops by at most `max_metric_drop` and it is faster in ONNX
Runtime by MIN_SPEEDUP or its ONNX file smaller by MIN_SIZE_REDUCTION. The test metric is reported, never decides.
"""

from __future__ import annotations

import copy
import math
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from training.backbones import SmallCNN
from training.recipe import ExportConfig, PruneConfig

if TYPE_CHECKING:
    from timm.models._efficientnet_blocks import InvertedResidual

STRUCTURED_BACKBONES = ("small-cnn", "efficientnet-lite0")
MIN_SPEEDUP = 1.05  # ONNX Runtime ms per batch of 8, before / after; above the noise of repeated timings
MIN_SIZE_REDUCTION = 0.10  # ONNX file bytes
TIMING_SECONDS = 1.0  # per timing round of each model
TIMING_ROUNDS = 3  # rounds alternate between the two models; the fastest round of each counts
CHANNEL_BLOCK = 8
RECALIBRATION_EXAMPLES = 512  # training examples that re-estimate BatchNorm statistics after channels go


@dataclass
class PruneOutcome:
    model: nn.Module  # the pruned model when kept, otherwise the model that came in
    kept: bool
    report: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


def resolve_method(cfg: PruneConfig, backbone: str) -> str:
    """`auto` → structured where channels can be removed (small-cnn, efficientnet-lite0), else
    unstructured. Raises ValueError for structured pruning of any other backbone."""
    if cfg.method == "auto":
        return "structured" if backbone in STRUCTURED_BACKBONES else "unstructured"
    if cfg.method == "structured" and backbone not in STRUCTURED_BACKBONES:
        raise ValueError(
            f"structured pruning supports the backbones {', '.join(STRUCTURED_BACKBONES)}, not {backbone!r}; use --prune-method unstructured"
        )
    return cfg.method


# --- unstructured --------------------------------------------------------------------------------


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]


def apply_unstructured(model: nn.Module, amount: float) -> list[tuple[nn.Module, str]]:
    """Global L1 magnitude masks over every Conv/Linear weight (the smallest `amount` of all of
    them together are zeroed); the masks stay attached until `bake_unstructured`."""
    params = prunable_weights(model)
    if not params:
        raise ValueError("no Conv/Linear weights to prune")
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=float(amount))
    return params


def bake_unstructured(params: list[tuple[nn.Module, str]]) -> None:
    """Make the zeros permanent: the weights become plain parameters again."""
    for module, name in params:
        if torch_prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            torch_prune.remove(module, name)


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over the Conv/Linear weights."""
    total = zeros = 0
    for module, name in prunable_weights(model):
        w = getattr(module, name)
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / max(1, total)


# --- structured ----------------------------------------------------------------------------------


def kept_count(channels: int, amount: float) -> int:
    keep = channels - round(amount * channels)
    if channels >= 2 * CHANNEL_BLOCK and channels % CHANNEL_BLOCK == 0:
        keep = max(CHANNEL_BLOCK, round(keep / CHANNEL_BLOCK) * CHANNEL_BLOCK)
    return max(1, min(channels, keep))


def channel_scores(bn: nn.BatchNorm2d, consumer: torch.Tensor) -> torch.Tensor:
    """Importance of each channel a BatchNorm produces: its spread (|γ|: a BN's output has standard
    deviation |γ| whatever the filter's scale) times the L1 norm of the weights that read it
    (`consumer`: the next conv's or linear layer's weight, channel on axis 1)."""
    spread = bn.weight.detach().abs() if bn.affine else torch.ones(bn.num_features)
    return spread * consumer.detach().abs().transpose(0, 1).flatten(1).sum(1)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches) -> None:
    """Re-estimate every BatchNorm's running statistics (a plain average) over `batches`, the rest of
    the model in eval mode. After channels are removed the statistics downstream are stale."""
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    for inputs, _ in batches:
        model(*inputs.values())
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    model.eval()


def _keep(scores: torch.Tensor, amount: float) -> torch.Tensor:
    k = kept_count(scores.numel(), amount)
    return torch.sort(torch.topk(scores, k).indices).values


def _param(t: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.clone().contiguous(), requires_grad=like.requires_grad)


def _conv_outputs(conv: nn.Conv2d, idx: torch.Tensor) -> None:
    conv.weight = _param(conv.weight.data[idx], conv.weight)
    if conv.bias is not None:
        conv.bias = _param(conv.bias.data[idx], conv.bias)
    conv.out_channels = len(idx)


def _conv_inputs(conv: nn.Conv2d, idx: torch.Tensor) -> None:
    if conv.groups != 1:
        raise ValueError("only dense convs can lose input channels")
    conv.weight = _param(conv.weight.data[:, idx], conv.weight)
    conv.in_channels = len(idx)


def _depthwise(conv: nn.Conv2d, idx: torch.Tensor) -> None:
    if not (conv.groups == conv.in_channels == conv.out_channels):
        raise ValueError("expected a depthwise conv")
    _conv_outputs(conv, idx)
    conv.in_channels = conv.groups = len(idx)


def _batchnorm(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    if bn.affine:
        bn.weight = _param(bn.weight.data[idx], bn.weight)
        bn.bias = _param(bn.bias.data[idx], bn.bias)
    # the backbones' BatchNorms track running statistics (torch's default)
    assert bn.running_mean is not None and bn.running_var is not None
    bn.running_mean = bn.running_mean[idx].clone()
    bn.running_var = bn.running_var[idx].clone()
    bn.num_features = len(idx)


def _linear_inputs(linear: nn.Linear, idx: torch.Tensor) -> None:
    linear.weight = _param(linear.weight.data[:, idx], linear.weight)
    linear.in_features = len(idx)


def _conv_bn(
    pairs: list[tuple[nn.Conv2d, nn.Module]],
) -> TypeGuard[list[tuple[nn.Conv2d, nn.BatchNorm2d]]]:
    return all(isinstance(bn, nn.BatchNorm2d) for _, bn in pairs)


def prune_small_cnn(model: nn.Module, amount: float) -> list[dict[str, int]]:
    """Remove output channels of every conv-BN block of a task model whose `.backbone` is a
    SmallCNN; the last block's removal shrinks `model.head`'s inputs."""
    # nn.Module's type gives attributes as a tensor or a module: say which module it is
    features = cast(SmallCNN, model.backbone).features
    pairs = [(m, features[i + 1]) for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
    if not _conv_bn(pairs):
        raise ValueError("expected conv-BN blocks")
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or head.in_features != pairs[-1][0].out_channels:
        raise ValueError("expected a linear `head` fed by the last block's pooled channels")
    layers = []
    for i, (conv, bn) in enumerate(pairs):
        before = conv.out_channels
        consumer = pairs[i + 1][0].weight if i + 1 < len(pairs) else head.weight
        idx = _keep(channel_scores(bn, consumer), amount)
        _conv_outputs(conv, idx)
        _batchnorm(bn, idx)
        if i + 1 < len(pairs):
            _conv_inputs(pairs[i + 1][0], idx)
        else:
            _linear_inputs(head, idx)
        layers.append({"before": before, "after": len(idx)})
    return layers


def prune_inverted_residual(block: InvertedResidual, amount: float) -> dict[str, int]:
    """Remove hidden (expanded) channels of one timm InvertedResidual block: conv_pw outputs and
    bn1, the depthwise conv_dw and bn2, conv_pwl inputs. The block's input and output widths stay."""
    if not isinstance(block.se, nn.Identity) or getattr(block, "conv_s2d", None) is not None:
        raise ValueError(
            "inverted-residual blocks with squeeze-excitation or space-to-depth are not supported"
        )
    before = block.conv_pw.out_channels
    # a hidden channel leaves the block through bn2 → act → conv_pwl: rank by its spread there and
    # how strongly conv_pwl reads it
    idx = _keep(channel_scores(block.bn2, block.conv_pwl.weight), amount)
    _conv_outputs(block.conv_pw, idx)
    _batchnorm(block.bn1, idx)
    _depthwise(block.conv_dw, idx)
    _batchnorm(block.bn2, idx)
    _conv_inputs(block.conv_pwl, idx)
    return {"before": before, "after": len(idx)}


def prune_efficientnet(model: nn.Module, amount: float) -> list[dict[str, int]]:
    """Every inverted-residual block of a task model whose `.backbone` is a timm EfficientNet."""
    from timm.models._efficientnet_blocks import InvertedResidual

    backbone = cast(nn.Module, model.backbone)  # nn.Module's type gives attributes as a tensor or a module
    blocks = [m for m in backbone.modules() if isinstance(m, InvertedResidual)]
    if not blocks:
        raise ValueError("no inverted-residual blocks in the backbone")
    return [prune_inverted_residual(b, amount) for b in blocks]


def resize_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Give the Conv/BatchNorm/Linear layers of a freshly built task model the widths found in
    `state` (e.g. a channel-pruned model's TorchScript weights), so `load_state_dict` fits."""
    for name, module in model.named_modules():
        shape = getattr(state.get(f"{name}.weight" if name else "weight"), "shape", None)
        if (
            shape is None
            or not hasattr(module, "weight")
            or module.weight is None
            or module.weight.shape == shape
        ):
            continue
        if isinstance(module, nn.modules.conv._ConvNd):
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            module.out_channels, module.in_channels = (
                shape[0],
                shape[0] if depthwise else shape[1] * module.groups,
            )
            module.groups = shape[0] if depthwise else module.groups
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.data.new_zeros(shape[0]))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = shape[0]
            module.bias = nn.Parameter(module.bias.data.new_zeros(shape[0]))
            module.running_mean, module.running_var = torch.zeros(shape[0]), torch.ones(shape[0])
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = shape
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.data.new_zeros(shape[0]))
        else:
            continue
        module.weight = nn.Parameter(module.weight.data.new_zeros(shape))
    return model


def apply_structured(model: nn.Module, backbone: str, amount: float) -> list[dict[str, int]]:
    """Remove channels in place; returns each pruned layer's channel count before and after."""
    if backbone == "small-cnn":
        return prune_small_cnn(model, amount)
    if backbone == "efficientnet-lite0":
        return prune_efficientnet(model, amount)
    raise ValueError(f"structured pruning supports {', '.join(STRUCTURED_BACKBONES)}, not {backbone!r}")


# --- measuring and deciding ----------------------------------------------------------------------


def count_nonzero(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def _evaluate(model: nn.Module, task, batches: dict[str, list], label_names: list[str]) -> dict[str, float]:
    from training.evaluate import torch_outputs

    out = {}
    for split, data in batches.items():
        outputs, targets = torch_outputs(model, task, data)
        out[f"{split}_{task.metric}"] = float(task.metrics(outputs, targets, label_names)[task.metric])
    return out


def _first_examples(loader, count: int):
    """Batches of `loader` until `count` examples (eval pre-processing when the loader is unshuffled)."""
    seen = 0
    for inputs, targets in loader:
        if seen >= count:
            return
        seen += len(next(iter(inputs.values())))
        yield inputs, targets


def _onnx_stats(model: nn.Module, task, example, path: Path, export: ExportConfig) -> dict[str, Any]:
    """Size of the graph the build would ship: the recipe's opset and exporter."""
    from training.export import export_onnx

    export_onnx(model, task, example, path, export.opset, dynamo=export.exporter == "dynamo")
    data = path.read_bytes()
    return {"onnx_bytes": len(data), "onnx_deflate_bytes": len(zlib.compress(data, 6))}


def _time_pair(paths: list[Path], feeds: dict, threads: int) -> list[float]:
    """ms per call of each model, rounds interleaved so both see the same machine load; the
    fastest round of each is its time (interference only ever adds)."""
    from training.quantise import time_session

    best = [math.inf] * len(paths)
    for _ in range(TIMING_ROUNDS):
        for i, p in enumerate(paths):
            best[i] = min(best[i], time_session(p, feeds, threads, seconds=TIMING_SECONDS))
    return best


def decide(
    method: str, before: dict[str, Any], after: dict[str, Any], metric: str, max_drop: float
) -> tuple[bool, dict[str, float], str]:
    """Keep only if the validation metric drops ≤ max_drop and the pruned model is faster in ONNX
    Runtime (≥ MIN_SPEEDUP) or its ONNX file is smaller (≥ MIN_SIZE_REDUCTION). The test drop is
    reported beside it. Returns (kept, numbers, why)."""
    drop = before[f"val_{metric}"] - after[f"val_{metric}"]
    test_drop = before[f"test_{metric}"] - after[f"test_{metric}"]
    speedup = before["ms_per_batch8"] / after["ms_per_batch8"]
    size_ratio = after["onnx_bytes"] / before["onnx_bytes"]
    accurate = drop <= max_drop + 1e-9
    faster, smaller = speedup >= MIN_SPEEDUP, size_ratio <= 1 - MIN_SIZE_REDUCTION
    kept = accurate and (faster or smaller)
    numbers = {
        "val_metric_drop": float(drop),
        "metric_drop": float(test_drop),
        "speedup": float(speedup),
        "size_ratio": float(size_ratio),
    }
    parts = [
        f"validation {metric} drop {drop * 100:.2f} points (limit {max_drop * 100:.2f}; test drop {test_drop * 100:.2f}, reported)",
        f"ONNX Runtime {speedup:.2f}× speed at batch 8 (needs {MIN_SPEEDUP:.2f}×)",
        f"ONNX file {size_ratio * 100:.0f}% of the original (needs ≤ {(1 - MIN_SIZE_REDUCTION) * 100:.0f}%)",
    ]
    if kept:
        why = "kept: " + "; ".join(parts)
    else:
        lacks = [
            w
            for w, ok in (
                ("not accurate enough", accurate),
                ("neither faster nor smaller", faster or smaller),
            )
            if not ok
        ]
        why = "not kept (" + ", ".join(lacks) + "): " + "; ".join(parts)
    if method == "unstructured":
        why += (
            "; unstructured sparsity gives ONNX Runtime nothing: the zeros are stored densely "
            f"(compressed, the file is {after['onnx_deflate_bytes'] / before['onnx_deflate_bytes'] * 100:.0f}% of the original, "
            "a download saving only) and the CPU kernels multiply them like any other weight"
        )
    return kept, numbers, why


def prune_and_recover(
    model: nn.Module, task, splits, cfg: PruneConfig | None = None, progress: bool = False
) -> PruneOutcome:
    """Prune a copy of the fine-tuned `model`, fine-tune it briefly with the shared loop, measure
    both and return the one to continue with (see the module docstring for the rule)."""
    from training.loop import fit

    recipe = task.recipe
    cfg = cfg or recipe.prune
    if cfg is None:
        raise ValueError("the recipe has no `prune` section")
    method = resolve_method(cfg, task.backbone.name)
    model.cpu().eval()
    batches = {
        "val": list(task.loader(splits.val, shuffle=False, batch_size=64)),
        "test": list(task.loader(splits.test, shuffle=False, batch_size=64)),
    }
    before = _evaluate(model, task, batches, splits.label_names)
    before |= {
        "parameters": sum(p.numel() for p in model.parameters()),
        "nonzero_parameters": count_nonzero(model),
    }

    pruned = copy.deepcopy(model)
    report: dict[str, Any] = {"method": method, "amount": cfg.amount}
    if method == "structured":
        layers = apply_structured(pruned, task.backbone.name, cfg.amount)
        kept_channels, all_channels = sum(r["after"] for r in layers), sum(r["before"] for r in layers)
        report["channels"] = {
            "layers": len(layers),
            "before": all_channels,
            "after": kept_channels,
            "removed_fraction": 1 - kept_channels / max(1, all_channels),
        }
        masks = []
        report["pruned_before_recovery"] = _evaluate(pruned, task, batches, splits.label_names)
        recalibrate_batchnorm(
            pruned,
            _first_examples(task.loader(splits.train, shuffle=False, batch_size=32), RECALIBRATION_EXAMPLES),
        )
        report["pruned_batchnorm_recalibrated"] = _evaluate(pruned, task, batches, splits.label_names)
    else:
        masks = apply_unstructured(pruned, cfg.amount)
        report["pruned_before_recovery"] = _evaluate(pruned, task, batches, splits.label_names)

    if cfg.recovery_epochs > 0:
        overrides = {"epochs": cfg.recovery_epochs, "freeze_backbone_epochs": 0}
        if cfg.recovery_lr is not None:
            overrides |= {"lr": cfg.recovery_lr, "head_lr": cfg.recovery_lr}
        train_cfg = recipe.train.model_copy(update=overrides)
        fitted = fit(pruned, task, splits, train_cfg, progress=progress)
        report["recovery"] = {
            "epochs": cfg.recovery_epochs,
            "steps": fitted.steps,
            "lr": train_cfg.lr,
            "head_lr": train_cfg.head_lr,
            "best_val": fitted.best_metric,
            "history": fitted.history,
        }
    bake_unstructured(masks)
    pruned.cpu().eval()

    after = _evaluate(pruned, task, batches, splits.label_names)
    after |= {
        "parameters": sum(p.numel() for p in pruned.parameters()),
        "nonzero_parameters": count_nonzero(pruned),
    }
    if method == "unstructured":
        report["weight_sparsity"] = weight_sparsity(pruned)

    example = task.example_inputs(splits.val)
    feeds = {k: v[:8].numpy() for k, v in batches["val"][0][0].items()}
    threads = max(1, torch.get_num_threads())
    with tempfile.TemporaryDirectory(prefix="tuneserve-prune-") as tmp:
        paths = [Path(tmp) / "before.onnx", Path(tmp) / "after.onnx"]
        before |= _onnx_stats(model, task, example, paths[0], recipe.export)
        after |= _onnx_stats(pruned, task, example, paths[1], recipe.export)
        before["ms_per_batch8"], after["ms_per_batch8"] = _time_pair(paths, feeds, threads)
    batch = next(iter(feeds.values())).shape[0]
    if batch != 8:
        report["timing_batch"] = batch  # a validation split smaller than 8

    kept, numbers, why = decide(method, before, after, task.metric, cfg.max_metric_drop)
    report |= {
        "before": before,
        "after": after,
        **numbers,
        "max_metric_drop": cfg.max_metric_drop,
        "kept": kept,
        "reason": why,
    }
    m = task.metric
    summary = (
        f"pruning {method} {cfg.amount:.0%}: validation {m} {before[f'val_{m}']:.4f} → {after[f'val_{m}']:.4f} "
        f"(test {before[f'test_{m}']:.4f} → {after[f'test_{m}']:.4f}), "
        f"ONNX {before['onnx_bytes'] / 1e6:.2f} → {after['onnx_bytes'] / 1e6:.2f} MB, "
        f"{before['ms_per_batch8']:.2f} → {after['ms_per_batch8']:.2f} ms/batch 8 — {'kept' if kept else 'not kept'}"
    )
    return PruneOutcome(model=pruned if kept else model, kept=kept, report=report, summary=summary)
