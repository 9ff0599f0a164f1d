"""Turning logits into probabilities and labelled answers."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64, returned as float32."""
    z = logits.astype(np.float64)
    z -= z.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z.astype(np.float32)


def top_label(probs: np.ndarray, labels: list[str]) -> list[dict]:
    """One `{"label", "score", "scores"}` per row of a (batch, classes) probability matrix."""
    if probs.shape[-1] != len(labels):
        raise ValueError(
            f"model returned {probs.shape[-1]} classes but the manifest lists {len(labels)} labels"
        )
    best = probs.argmax(axis=-1)
    return [
        {
            "label": labels[int(i)],
            "score": float(row[i]),
            "scores": {label: float(p) for label, p in zip(labels, row)},
        }
        for i, row in zip(best, probs)
    ]


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[dict]:
    """One `{"label", "score", "top_k": [{"label", "score"}, ...]}` per row, best first."""
    if probs.shape[-1] != len(labels):
        raise ValueError(
            f"model returned {probs.shape[-1]} classes but the manifest lists {len(labels)} labels"
        )
    k = min(k, len(labels))
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    out = []
    for row, idx in zip(probs, order):
        ranked = [{"label": labels[int(i)], "score": float(row[i])} for i in idx]
        out.append({"label": ranked[0]["label"], "score": ranked[0]["score"], "top_k": ranked})
    return out
