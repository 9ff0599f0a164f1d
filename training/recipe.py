"""Recipes are data: `training/recipes/<name>.yaml`, validated by the pydantic models below."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    # "builtin:<file>" names a dataset shipped in training/data/; anything else is a path.
    source: str
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 13
    limit: int | None = Field(None, description="use only this many examples (smoke runs)")
    target: str | None = Field(None, description="tables: the column to predict")
    pseudo_labels: bool = Field(
        False,
        description="label examples with the pretrained model's own predictions (export a pretrained classifier as is)",
    )


class TrainConfig(_Strict):
    epochs: int = Field(8, ge=0, description="0 exports the pretrained model without fine-tuning")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-5, gt=0)
    head_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    freeze_backbone_epochs: int = Field(0, ge=0)
    patience: int = Field(3, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    seed: int = 13
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps (smoke runs)")
    grad_accum_steps: int = Field(
        1, ge=1, description="micro-batches per optimiser step (batch_size is per micro-batch)"
    )
    mixed_precision: Literal["auto", "off", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU, full precision on the CPU"
    )
    device: Literal["auto", "cpu"] = Field("auto", description="auto: the GPU when there is one")


class PretrainConfig(TrainConfig):
    """Pretraining on a generated corpus before fine-tuning on the recipe's data (forecasting)."""

    series: int = Field(400, ge=1, description="number of generated series in the corpus")
    windows_per_series: int = Field(16, ge=1, description="forecast origins drawn from each series")


class ExportConfig(_Strict):
    opset: int = 17
    parity_atol: float = 1e-4
    exporter: Literal["torchscript", "dynamo"] = Field(
        "torchscript",
        description=(
            "ONNX exporter: torch.onnx's TorchScript-based one, or torch.export's (dynamo=True, opset 18 "
            "at least); benchmarks/engines.py measures both for every default model"
        ),
    )
    fp16: bool = Field(
        True, description="also write model.fp16.onnx for GPUs, served there when it matches fp32"
    )
    fp16_rtol: float | None = Field(
        None,
        gt=0,
        description="largest |fp16 - fp32| output difference on test, as a share of the largest fp32 output (at least 1); default: the task's",
    )


class QuantiseConfig(_Strict):
    # static: QDQ, per-channel weights, activation ranges calibrated on training inputs and fixed in
    # the graph, so a served answer never depends on the other requests in its batch. dynamic:
    # activation ranges per call, i.e. per batch: answers shift with their batch-mates (offline use).
    mode: Literal["none", "dynamic", "static"] = "static"
    max_metric_drop: float = Field(
        0.01, ge=0, description="largest allowed drop of the deciding validation metric vs fp32"
    )
    require_speedup: bool = Field(
        False, description="serve INT8 only if it is also faster than fp32 on this machine"
    )
    calibration_size: int = Field(256, ge=1)
    calibration_method: Literal["minmax", "percentile", "entropy", "least-error"] = Field(
        "minmax",
        description="static mode: how activation ranges are read from the calibration inputs: their "
        "extremes; the 99.999th percentile; ONNX Runtime's entropy method; or, per tensor, the range "
        "with the least squared rounding and clipping error (training/quantise.py activation_ranges)",
    )
    float_layers: list[str] = Field(
        default_factory=list,
        description="static mode: layers left in float, named by a fragment of their weights' names "
        "(e.g. `backbone.conv_stem.`): the few whose rounding costs most (benchmarks/imagenet_int8.py)",
    )

    @model_validator(mode="after")
    def _float_layers_need_static(self) -> QuantiseConfig:
        if self.float_layers and self.mode != "static":
            raise ValueError(f"float_layers applies to mode: static only (this recipe's mode is {self.mode})")
        if self.calibration_method != "minmax" and self.mode != "static":
            raise ValueError(
                f"calibration_method applies to mode: static only (this recipe's mode is {self.mode})"
            )
        return self


class PruneConfig(_Strict):
    """Magnitude pruning of the fine-tuned model, then a short recovery fine-tune (training/prune.py);
    the pruned model replaces it only if it wins (validation metric within `max_metric_drop`, and
    faster in ONNX Runtime or a smaller ONNX file)."""

    amount: float = Field(
        0.3,
        ge=0,
        le=0.95,
        description="fraction of weights (unstructured) or of channels per layer (structured) to remove",
    )
    # auto: structured for small-cnn and efficientnet-lite0 (channels really removed), unstructured otherwise
    method: Literal["auto", "unstructured", "structured"] = "auto"
    recovery_epochs: int = Field(
        2, ge=0, description="epochs of fine-tuning after pruning (masks kept in place when unstructured)"
    )
    recovery_lr: float | None = Field(
        None,
        gt=0,
        description="learning rate of the recovery (default: the recipe's train.lr and train.head_lr)",
    )
    max_metric_drop: float = Field(
        0.01, ge=0, description="largest allowed drop of the deciding validation metric vs the unpruned model"
    )


class Gates(_Strict):
    # A release gate on the test split (a floor the build must clear), not a choice between models:
    # those are made on validation.
    min_test_metric: float = Field(
        0.0, ge=0, le=1, description="build fails below this on the served variant"
    )


class ParamSpec(_Strict):
    """One searched value: a float or int range (optionally log-scaled) or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    grid: list[Any] | None = Field(
        None, description="values the grid sampler tries (default: the choices, or low/middle/high)"
    )

    def grid_values(self) -> list[Any]:
        if self.grid is not None:
            return list(self.grid)
        if self.type == "categorical":
            return list(self.choices or [])
        # numeric specs have both bounds: the search checks its space before sampling
        assert self.low is not None and self.high is not None
        mid = (self.low * self.high) ** 0.5 if self.log and self.low > 0 else (self.low + self.high) / 2
        values = [self.low, mid, self.high]
        return sorted({round(v) for v in values}) if self.type == "int" else values


class SearchConfig(_Strict):
    """`tuneserve search`: the space (dotted recipe keys → ParamSpec), the per-trial epoch budget and
    the pruner that stops trials whose validation curve falls behind."""

    space: dict[str, ParamSpec]
    epochs: int | None = Field(
        None, ge=1, description="epochs per trial (default: the recipe's, or the space's train.epochs)"
    )
    pruner: Literal["median", "halving", "none"] = "median"
    metric: str | None = Field(
        None, description="validation metric to maximise (default: the task's deciding metric)"
    )


class Recipe(_Strict):
    name: str
    description: str = ""
    task: str
    backbone: str
    # Other backbones to build the same way; the best served validation metric per millisecond wins.
    compare_backbones: list[str] = Field(default_factory=list)
    default: bool = Field(True, description="built by `tuneserve build` and `make serve`")
    version: str = "1"
    labels: list[str] | None = None
    data: DataConfig
    # Keys are the task's (`Task.preprocessing_model`), validated when the task is constructed.
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    pretrain: PretrainConfig | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    quantise: QuantiseConfig = Field(default_factory=QuantiseConfig)
    gates: Gates = Field(default_factory=Gates)
    search: SearchConfig | None = None
    prune: PruneConfig | None = None

    def with_overrides(self, overrides: dict[str, Any]) -> Recipe:
        """Apply dotted overrides such as {"train.epochs": 2, "data.source": "my.csv"}; re-validated."""
        data = self.model_dump()
        for dotted, value in overrides.items():
            if value is None:
                continue
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            node[leaf] = value
        return Recipe.model_validate(data)


class RecipeError(ValueError):
    pass


def recipe_path(name: str) -> Path:
    return RECIPES_DIR / f"{name}.yaml"


def load_recipe(name_or_path: str | Path) -> Recipe:
    path = Path(name_or_path)
    if not path.suffix:
        path = recipe_path(str(name_or_path))
    if not path.is_file():
        raise RecipeError(f"no recipe {name_or_path!r}; known recipes: {', '.join(list_recipes()) or 'none'}")
    try:
        return Recipe.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        raise RecipeError(f"{path}: {exc}") from None


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
