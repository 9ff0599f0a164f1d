"""What a task must say: how to build the model, how a batch becomes tensors, which metric decides,
and what the ONNX signature is. Everything else (loop, export, quantise, repository) is shared."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from training.backbones import Backbone
from training.recipe import Recipe

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


@dataclass
class Splits:
    train: Any
    val: Any
    test: Any
    label_names: list[str]


class Task(ABC):
    name: str
    modality: str
    metric: str  # the metric that decides early stopping, the quantisation gate and the quality gate
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]

    def __init__(self, recipe: Recipe, backbone: Backbone) -> None:
        self.recipe = recipe
        self.backbone = backbone
        # Extra results for the manifest's metrics (baselines, calibration, backtests), filled by hooks.
        self.report: dict[str, Any] = {}
        self.progress = True  # progress bars and messages of the task's own stages

    @abstractmethod
    def load_data(self) -> Splits: ...

    @abstractmethod
    def build_model(self, label_names: list[str]) -> nn.Module:
        """A module whose forward takes `input_names` tensors in order and returns logits;
        its pretrained part is `.backbone` (frozen for the recipe's first epochs)."""

    @abstractmethod
    def loader(self, split: Any, shuffle: bool, batch_size: int | None = None) -> DataLoader: ...

    @abstractmethod
    def metrics(self, logits: np.ndarray, targets: np.ndarray, label_names: list[str]) -> dict[str, Any]: ...

    @abstractmethod
    def preprocessing_config(self) -> dict[str, Any]:
        """The manifest's `preprocessing` section: everything serving needs to prepare inputs."""

    def prepare(self, model: nn.Module, splits: Splits) -> None:
        """Hook run once the model is built and before training (e.g. pseudo-labelling)."""

    def restore(self, preprocessing: dict[str, Any]) -> None:
        """Set what `build_model` needs from a manifest's `preprocessing` (to rebuild a built model)."""

    def after_fit(self, model: nn.Module, splits: Splits) -> None:
        """Hook run after training and before test evaluation and export (e.g. calibration)."""

    # Static quantisation: whether ONNX Runtime's symbolic shape pass can follow the graph, and which
    # operator types to quantise (None: every supported one).
    quantise_symbolic_shapes: bool = True
    quantise_op_types: list[str] | None = None

    def calibration_inputs(self, splits: Splits, count: int) -> list[dict[str, np.ndarray]]:
        """Model inputs for static quantisation's calibration; tasks that support it override this."""
        raise NotImplementedError(f"{self.name} does not support static quantisation")

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, targets)

    def assets(self) -> dict[str, Path]:
        """Files copied next to the model (name in the model folder → source path)."""
        return self.backbone.assets()

    def example_inputs(self, split: Any) -> dict[str, torch.Tensor]:
        inputs, _ = next(iter(self.loader(split, shuffle=False, batch_size=2)))
        return inputs
