"""What a training task module declares; everything else (loop, evaluation, export, quantise,
pruning, repository) is shared and calls these hooks.

A task module says:

- **preprocessing config**: `preprocessing_model`, a pydantic model (a `Preprocessing` subclass) of the recipe's `preprocessing` keys
  with their defaults; unknown keys are refused when the task is constructed, naming the key.
- **data**: `load_data` → `Splits` (train / val / test and the label names).
- **model**: `build_model` from the backbone; its forward takes the `input_names` tensors in order.
- **batch → tensors**: `loader` yields `Batch`es, `(inputs, targets)`: `inputs` maps each ONNX input
  name to a tensor (in `input_names` order, so the loop calls `model(*inputs.values())`), `targets`
  has whatever structure the task needs (class labels, per-token tags, a dict of the future and its
  seasonal-naive baseline, ...).
- **targets**: `targets_to` (onto a device), `collect_targets` (per-batch targets → one structure
  for `metrics`), `collect_outputs` (per-batch model outputs → one structure).
- **loss**: `loss(outputs, targets)`; **metrics**: `metrics(outputs, targets, label_names)`, of
  which `metric` decides. Every decision (early stopping, the INT8 gate, backbone comparison,
  pruning, hyper-parameter search) is taken on the validation split; test is only reported.
- **parity**: `parity(reference, candidate)` compares an exported engine's outputs with PyTorch's
  and `parity_problem` says whether that fails (classifiers: a tolerance and argmax equality).
- **ONNX signature**: `input_names`, `output_names`, `dynamic_axes`; static INT8 calibration
  inputs; `preprocessing_config` (what serving needs, written to the manifest) and `assets`.
- **pictures**: `figures` draws the task's own figures of the test split (training/figures.py)
  beside the build's training curves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from torch.utils.data import DataLoader

from training.backbones import Backbone
from training.evaluate import IGNORE, concat_padded, max_abs_diff
from training.recipe import Recipe, RecipeError

Batch = tuple[
    dict[str, torch.Tensor], Any
]  # (model inputs by ONNX input name, targets as the task structures them)


@dataclass
class Splits:
    train: Any
    val: Any
    test: Any
    label_names: list[str]


class Preprocessing(BaseModel):
    """A task's recipe `preprocessing` keys. Tasks subclass it with their own keys."""

    model_config = ConfigDict(extra="forbid")

    # One default for every task: off. Recipes that want augmentation say so (keywords, surface-defects: 1.0).
    augment_strength: float = Field(
        0.0, ge=0, description="training-time augmentation; 0 = off, 1 = the documented default amounts"
    )


P = TypeVar("P", bound=Preprocessing)


class Task(ABC, Generic[P]):
    """Subclasses name their `Preprocessing` subclass twice: as the type argument (`Task[TextPreprocessing]`,
    which types `self.options`) and as `preprocessing_model` (which validates the recipe's keys)."""

    name: ClassVar[str]
    modality: ClassVar[str]
    # the validation metric that decides early stopping, the INT8 gate, backbone and pruning choices
    metric: ClassVar[str]
    output_names: ClassVar[list[str]]
    # A type variable cannot be a ClassVar's type; subclasses still assign it in the class body.
    preprocessing_model: type[P]
    # Train in channels-last memory (4-D inputs and conv weights): PyTorch's CPU convolutions,
    # depthwise ones above all, run much faster so; the exported graphs are the same.
    channels_last: ClassVar[bool] = False

    if TYPE_CHECKING:
        # The ONNX inputs and their dynamic axes: class attributes in most tasks, properties where
        # they depend on the data (tabular: `categorical` only when the schema has such columns).
        @property
        def input_names(self) -> list[str]: ...
        @property
        def dynamic_axes(self) -> dict[str, dict[int, str]]: ...

    def __init__(self, recipe: Recipe, backbone: Backbone) -> None:
        self.recipe = recipe
        self.backbone = backbone
        self.options: P = self.validate_preprocessing(recipe)
        # Extra results for the manifest's metrics (baselines, calibration, backtests), filled by hooks.
        self.report: dict[str, Any] = {}
        self.progress = True  # progress bars of the task's own stages (data generation, pretraining)

    @classmethod
    def validate_preprocessing(cls, recipe: Recipe) -> P:
        try:
            return cls.preprocessing_model.model_validate(recipe.preprocessing)
        except ValidationError as exc:
            problems = "; ".join(
                f"preprocessing.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            known = ", ".join(cls.preprocessing_model.model_fields)
            raise RecipeError(
                f"recipe {recipe.name!r} ({cls.name}): {problems} (known keys: {known})"
            ) from None

    @abstractmethod
    def load_data(self) -> Splits: ...

    @abstractmethod
    def build_model(self, label_names: list[str]) -> nn.Module:
        """A module whose forward takes `input_names` tensors in order and returns the outputs;
        its pretrained part is `.backbone` (frozen for the recipe's first epochs)."""

    @abstractmethod
    def loader(self, split: Any, shuffle: bool, batch_size: int | None = None) -> DataLoader: ...

    @abstractmethod
    def metrics(self, outputs: Any, targets: Any, label_names: list[str]) -> dict[str, Any]:
        """Scores of collected outputs against collected targets; `metric` is among them."""

    @abstractmethod
    def preprocessing_config(self) -> dict[str, Any]:
        """The manifest's `preprocessing` section: everything serving needs to prepare inputs."""

    def prepare(self, model: nn.Module, splits: Splits) -> None:
        """Hook run once the model is built and before training (e.g. pseudo-labelling)."""

    def restore(self, preprocessing: dict[str, Any]) -> None:
        """Set what `build_model` needs from a manifest's `preprocessing` (to rebuild a built model)."""

    def after_fit(self, model: nn.Module, splits: Splits) -> None:
        """Hook run after training and before test evaluation and export (e.g. calibration on validation)."""

    def figures(
        self, folder: Path, outputs: Any, targets: Any, splits: Splits, metrics: dict[str, Any]
    ) -> dict[str, Path]:
        """The task's pictures of the trained model on the test split, drawn into `folder` with
        training/figures.py: `outputs` and `targets` as collected for `metrics`, which holds their
        scores. Returns kind → file. The build adds the training curves. Default: the confusion
        matrix, when the metrics have one (classifiers)."""
        if "confusion_matrix" not in metrics:
            return {}
        from training import figures

        path = figures.confusion_matrix(
            folder / "confusion_matrix.png",
            np.asarray(metrics["confusion_matrix"]),
            splits.label_names,
            title=f"{self.recipe.name}: test split",
        )
        return {"confusion_matrix": path}

    # The fp16 variant's tolerance vs fp32 (training/fp16.py), as a share of the largest fp32 output
    # (at least 1): float16 keeps about three significant digits, so the error grows with the
    # outputs' scale (large logits of a well-trained model, forecasts) and with the depth of the
    # network; labels must not change at all, and this only bounds the drift.
    fp16_rtol: ClassVar[float] = 0.01

    # Static quantisation: whether ONNX Runtime's symbolic shape pass can follow the graph, and which
    # operator types to quantise (None: every supported one).
    quantise_symbolic_shapes: ClassVar[bool] = True
    quantise_op_types: ClassVar[list[str] | None] = None
    # Operator types whose outputs stay float: ONNX Runtime then runs quantised input × INT8 weight
    # → float in one kernel (MatMulIntegerToFloat) instead of requantising every output to UINT8 and
    # dequantising it again for the float operators that follow.
    quantise_float_outputs: ClassVar[list[str]] = []
    # Whether products of two activations (attention) are quantised too, or stay float.
    quantise_activation_products: ClassVar[bool] = True

    def calibration_inputs(self, splits: Splits, count: int) -> list[dict[str, np.ndarray]]:
        """Model inputs for static quantisation's calibration; tasks that support it override this."""
        raise NotImplementedError(f"{self.name} does not support static quantisation")

    def loss(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, targets)

    def targets_to(self, targets: Any, device: torch.device) -> Any:
        """Targets on `device` (training on a GPU). Default: a tensor or a dict of tensors."""
        if isinstance(targets, dict):
            return {k: v.to(device) for k, v in targets.items()}
        return targets.to(device)

    def collect_targets(self, targets: list[Any]) -> Any:
        """Per-batch targets → what `metrics` takes. Default: a tensor (or a dict of tensors) per
        batch, concatenated along the batch axis as numpy; per-token targets of batches with
        different lengths padded with IGNORE."""
        if isinstance(targets[0], dict):
            return {k: concat_padded([t[k].numpy() for t in targets], IGNORE) for k in targets[0]}
        return concat_padded([t.numpy() for t in targets], IGNORE)

    def collect_outputs(self, outputs: list[np.ndarray]) -> Any:
        """Per-batch outputs (of PyTorch, ONNX Runtime or TorchScript) → what `metrics` and `parity`
        take. Default: concatenated, per-token outputs padded with zeros (the metrics skip padding)."""
        return concat_padded(outputs, 0.0)

    def parity(self, reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
        """How an exported engine's outputs compare with PyTorch's over the same batches (recorded as
        the variant's `parity`). Default, for classifiers: the largest absolute difference and whether
        every predicted class (argmax) is the same."""
        return {
            "max_abs_diff": max_abs_diff(reference, candidate),
            "argmax_equal": bool((reference.argmax(-1) == candidate.argmax(-1)).all()),
        }

    def parity_problem(self, report: dict[str, Any], atol: float) -> str | None:
        """Why a `parity` report fails (None: it passes): past the tolerance, or a changed argmax where
        the report has one."""
        problems = []
        if report["max_abs_diff"] > atol:
            problems.append(f"max |Δ| = {report['max_abs_diff']:.2e} (limit {atol:.2e})")
        if report.get("argmax_equal") is False:
            problems.append("the argmax differs")
        return ", ".join(problems) or None

    def add_files(self, folder: Path, splits: Splits) -> None:
        """Write files made from the exported model that serving reads beside it (a search index)
        into the model's staging folder, after the gates and before the manifest lists every file;
        `preprocessing_config` names them."""

    def assets(self) -> dict[str, Path]:
        """Files copied next to the model (name in the model folder → source path)."""
        return self.backbone.assets()

    def example_inputs(self, split: Any) -> dict[str, torch.Tensor]:
        inputs, _ = next(iter(self.loader(split, shuffle=False, batch_size=2)))
        return inputs
