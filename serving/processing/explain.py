"""Per-feature contributions of a table model's prediction: sampled Shapley values (numpy only).

The value explained is the model's output for a row in one space: the log-odds of the positive
class for binary models, the probability of the predicted label otherwise. A feature's contribution
is its interventional Shapley value with respect to a background sample B (stored in the manifest):
the average, over orderings of the features and over background rows b, of how much the output
moves when the feature switches from b's value to the row's value, the features before it in the
ordering already switched.

Orderings are sampled (antithetic pairs: each ordering and its reverse), the same ones for every
row, so an answer does not depend on which other requests were batched with it. For every
ordering and background row the switches telescope from f(b) to f(x), so additivity holds
exactly, not just on average: base + Σ contributions = value, with base = mean over B of f(b).
Cost per explained row: P · |B| · (M − 1) hybrid rows through the model (P orderings, M features),
run in one ONNX Runtime call with the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class FeatureColumns:
    """Where a feature lives in the encoded arrays: (input name, column) pairs."""

    name: str
    columns: tuple[tuple[str, int], ...]


def orderings(features: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` orderings of `features` (rounded up to even): random ones and their reverses."""
    rng = np.random.default_rng(seed)
    half = [rng.permutation(features) for _ in range((max(count, 2) + 1) // 2)]
    return np.array([p for q in half for p in (q, q[::-1])], dtype=np.int64)


class ShapleySampler:
    """Builds the hybrid rows for explained rows and turns the model's outputs on them into
    contributions. One instance per loaded model (the background is encoded once)."""

    def __init__(self, features: list[FeatureColumns], background: Feeds, permutations: int) -> None:
        self.features = features
        self.background = background
        self.size = len(next(iter(background.values())))
        m = len(features)
        self.order = orderings(m, permutations)
        # switched[p, k, j]: feature j has taken the row's value after k switches of ordering p
        positions = np.argsort(self.order, axis=1)  # positions[p, j]: where j comes in ordering p
        steps = np.arange(m + 1)[None, :, None]
        self.switched = positions[:, None, :] < steps  # (P, M+1, M)
        # interior steps only: step 0 is the background row itself, step M the explained row
        self.interior = self.switched[:, 1:m, :]
        self.column_masks: dict[str, np.ndarray] = {}
        for name in background:
            # (P, M-1, width): whether each column comes from the explained row at each interior step
            self.column_masks[name] = self.columns_of(name, self.interior)

    def columns_of(self, name: str, switched: np.ndarray) -> np.ndarray:
        """Feature masks (..., M) → masks of input `name`'s columns (..., width): a column follows
        the feature it belongs to; columns of no feature stay with the background."""
        width = self.background[name].shape[1]
        owner = np.full(width, -1)
        for j, f in enumerate(self.features):
            for input_name, column in f.columns:
                if input_name == name:
                    owner[column] = j
        mask = np.zeros((*switched.shape[:-1], width), dtype=bool)
        covered = owner >= 0
        mask[..., covered] = switched[..., owner[covered]]
        return mask

    @property
    def rows_per_explanation(self) -> int:
        p, interior, _ = self.interior.shape
        return p * self.size * interior

    def hybrids(self, row: Feeds) -> Feeds:
        """The P · |B| · (M − 1) rows mixing one encoded row (arrays of length 1) with the background."""
        out = {}
        for name, mask in self.column_masks.items():
            x = row[name][0]  # (width,)
            b = self.background[name]  # (B, width)
            mixed = np.where(mask[:, :, None, :], x[None, None, None, :], b[None, None, :, :])
            out[name] = mixed.reshape(-1, b.shape[1]).astype(b.dtype, copy=False)
        return out

    def contributions(
        self, value: float, background_values: np.ndarray, hybrid_values: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """(base, contributions per feature) from f(x), f on the background (B,) and f on the
        hybrids (in `hybrids`' order)."""
        p, interior, m = self.interior.shape
        steps = np.empty((p, m + 1, self.size), dtype=np.float64)
        steps[:, 0, :] = background_values[None, :]
        steps[:, 1:m, :] = hybrid_values.reshape(p, interior, self.size)
        steps[:, m, :] = value
        moves = np.diff(steps, axis=1)  # (P, M, B): the move of the feature switched at each step
        switched_at = self.order  # (P, M): which feature switches at step k+1
        phi = np.zeros(m, dtype=np.float64)
        np.add.at(phi, switched_at.ravel(), moves.mean(axis=2).ravel())
        return float(background_values.mean()), phi / p
