"""Examples already encoded as arrays (tables, series windows) and a DataLoader over them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


Transform = Callable[[dict[str, np.ndarray], np.ndarray], tuple[dict[str, np.ndarray], np.ndarray]]


def array_loader(examples: ArrayExamples, batch_size: int, shuffle: bool, seed: int, transform: Transform | None = None) -> DataLoader:
    """Batches of (inputs dict, targets) tensors, sliced straight from the arrays; `transform`
    (training augmentation) maps each batch's arrays before they become tensors."""

    def collate(index: list[int]):
        idx = np.asarray(index)
        inputs, targets = {k: v[idx] for k, v in examples.inputs.items()}, examples.targets[idx]
        if transform is not None:
            inputs, targets = transform(inputs, targets)
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}, torch.from_numpy(np.ascontiguousarray(targets))

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(range(len(examples)), batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)
