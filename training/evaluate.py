"""Metrics and batched inference shared by every task."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from torch import nn

if TYPE_CHECKING:
    from training.tasks.base import Batch


def classification_metrics(logits: np.ndarray, targets: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    predicted = logits.argmax(axis=-1)
    labels = list(range(len(label_names)))
    return {
        "accuracy": float(accuracy_score(targets, predicted)),
        "macro_f1": float(f1_score(targets, predicted, labels=labels, average="macro", zero_division=0)),
        "confusion_matrix": confusion_matrix(targets, predicted, labels=labels).tolist(),
        "n": int(len(targets)),
    }


@torch.no_grad()
def torch_logits(model: nn.Module, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    outs, targets = [], []
    for inputs, target in batches:
        outs.append(model(*inputs.values()).float().numpy())
        targets.append(target.numpy())
    return np.concatenate(outs), np.concatenate(targets)


def run_batches(fn: Callable[[dict[str, np.ndarray]], np.ndarray], batches: Iterable[Batch]) -> np.ndarray:
    """Logits of any numpy-in/numpy-out engine (ONNX Runtime, TorchScript) over the same batches."""
    return np.concatenate([fn({k: v.numpy() for k, v in inputs.items()}) for inputs, _ in batches])
