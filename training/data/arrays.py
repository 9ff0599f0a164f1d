"""Examples already encoded as arrays (tables, series windows) and a DataLoader over them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch.utils.data import DataLoader

# One array of targets (class labels), or named arrays sharing the example axis (a forecast's future
# and its seasonal-naive baseline).
Targets = np.ndarray | dict[str, np.ndarray]


def _take(targets: Targets, index: np.ndarray) -> Targets:
    return {k: v[index] for k, v in targets.items()} if isinstance(targets, dict) else targets[index]


def _join(parts: list[Targets]) -> Targets:
    if isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    # every part has the first one's structure (examples of one task), which a list's type cannot say
    return np.concatenate(cast(list[np.ndarray], parts))


def _tensors(targets: Targets) -> torch.Tensor | dict[str, torch.Tensor]:
    if isinstance(targets, dict):
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in targets.items()}
    return torch.from_numpy(np.ascontiguousarray(targets))


@dataclass
class ArrayExamples:
    inputs: dict[str, np.ndarray]  # model input name → (n, ...) array, in the model's input order
    targets: Targets

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def subset(self, index: np.ndarray) -> ArrayExamples:
        return ArrayExamples({k: v[index] for k, v in self.inputs.items()}, _take(self.targets, index))

    @staticmethod
    def concatenate(parts: list[ArrayExamples]) -> ArrayExamples:
        inputs = {k: np.concatenate([p.inputs[k] for p in parts]) for k in parts[0].inputs}
        return ArrayExamples(inputs, _join([p.targets for p in parts]))


Transform = Callable[[dict[str, np.ndarray], Targets], tuple[dict[str, np.ndarray], Targets]]


def array_loader(
    examples: ArrayExamples, batch_size: int, shuffle: bool, seed: int, transform: Transform | None = None
) -> DataLoader:
    """Batches of (inputs dict, targets) tensors, sliced straight from the arrays; `transform`
    (training augmentation) maps each batch's arrays before they become tensors."""

    def collate(index: list[int]):
        idx = np.asarray(index)
        inputs, targets = {k: v[idx] for k, v in examples.inputs.items()}, _take(examples.targets, idx)
        if transform is not None:
            inputs, targets = transform(inputs, targets)
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}, _tensors(targets)

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        range(len(examples)),  # type: ignore[arg-type]  # torch takes any sequence as a map-style dataset
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        generator=generator,
    )
