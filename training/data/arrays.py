"""Examples already encoded as arrays (tables, series windows) and a DataLoader over them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader


@dataclass
class ArrayExamples:
    inputs: dict[str, np.ndarray]  # model input name → (n, ...) array, in the model's input order
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: np.ndarray) -> "ArrayExamples":
        return ArrayExamples({k: v[index] for k, v in self.inputs.items()}, self.targets[index])


def array_loader(examples: ArrayExamples, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    """Batches of (inputs dict, targets) tensors, sliced straight from the arrays."""

    def collate(index: list[int]):
        idx = np.asarray(index)
        return {k: torch.from_numpy(v[idx]) for k, v in examples.inputs.items()}, torch.from_numpy(examples.targets[idx])

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(range(len(examples)), batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)
