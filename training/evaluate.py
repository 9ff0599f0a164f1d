"""Metrics and batched inference shared by every task."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss
from torch import nn

if TYPE_CHECKING:
    from training.tasks.base import Batch, Task


def classification_metrics(logits: np.ndarray, targets: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    predicted = logits.argmax(axis=-1)
    labels = list(range(len(label_names)))
    return {
        "accuracy": float(accuracy_score(targets, predicted)),
        "macro_f1": float(f1_score(targets, predicted, labels=labels, average="macro", zero_division=0)),
        # finer than accuracy on small splits (e.g. hyper-parameter search): higher is better
        "neg_log_loss": -float(log_loss(targets, _softmax(logits), labels=labels)),
        "confusion_matrix": confusion_matrix(targets, predicted, labels=labels).tolist(),
        "n": len(targets),
    }


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.clip(e / e.sum(axis=-1, keepdims=True), 1e-15, 1.0)


def max_abs_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.abs(reference - candidate).max())


IGNORE = -100  # target of positions that do not count (padding, non-first sub-tokens)


def concat_padded(arrays: list[np.ndarray], fill: float) -> np.ndarray:
    """Concatenate along the batch axis; per-token outputs of batches with different sequence
    lengths are padded to the longest first (padding is ignored by the metrics)."""
    if arrays[0].ndim < 2 or all(a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays)
    longest = max(a.shape[1] for a in arrays)
    return np.concatenate(
        [
            np.pad(a, [(0, 0), (0, longest - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=fill)
            for a in arrays
        ]
    )


@torch.no_grad()
def torch_outputs(model: nn.Module, task: Task, batches: Iterable[Batch]) -> tuple[Any, Any]:
    """The PyTorch model's outputs and the targets over `batches`, each collected by the task's hooks."""
    model.eval()
    outputs, targets = [], []
    for inputs, target in batches:
        outputs.append(model(*inputs.values()).float().numpy())
        targets.append(target)
    return task.collect_outputs(outputs), task.collect_targets(targets)


def run_batches(
    fn: Callable[[dict[str, np.ndarray]], np.ndarray], task: Task, batches: Iterable[Batch]
) -> Any:
    """Outputs of any numpy-in/numpy-out engine (ONNX Runtime, TorchScript) over the same batches."""
    return task.collect_outputs([fn({k: v.numpy() for k, v in inputs.items()}) for inputs, _ in batches])


def token_metrics(logits: np.ndarray, targets: np.ndarray, tag_names: list[str]) -> dict[str, Any]:
    """Entity-level precision/recall/F1 (seqeval, strict BIO spans) per type and micro-averaged,
    over the positions that carry a label (first sub-token of each word)."""
    from seqeval.metrics import classification_report

    predicted = logits.argmax(-1)
    truth, guess = [], []
    for t_row, p_row in zip(targets, predicted):
        keep = t_row != IGNORE
        truth.append([tag_names[i] for i in t_row[keep]])
        guess.append([tag_names[i] for i in p_row[keep]])
    report = classification_report(truth, guess, output_dict=True, zero_division=0)
    out: dict[str, Any] = {
        "micro_f1": float(report["micro avg"]["f1-score"]),
        "micro_precision": float(report["micro avg"]["precision"]),
        "micro_recall": float(report["micro avg"]["recall"]),
        "n": len(targets),
    }
    for kind, row in report.items():
        if "avg" not in kind:
            out[f"f1_{kind}"] = float(row["f1-score"])
    return out
