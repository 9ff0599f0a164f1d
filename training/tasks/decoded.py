"""The shared half of tasks whose examples are files decoded once into memory (images, audio):
datasets cached per split and mode (train = augmented, eval = the server's pre-processing),
batching, loaders, calibration inputs for static quantisation, and classification metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from training.data.images import ImageExamples
from training.evaluate import classification_metrics
from training.tasks.base import Batch, P, Splits, Task


class DecodedFiles(Dataset):
    """Files decoded once (`decode(bytes)`), transformed per access (`transform(decoded)`)."""

    def __init__(
        self,
        split: ImageExamples,
        decode: Callable[[bytes], np.ndarray],
        transform: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        self.items = [decode(p.read_bytes()) for p in split.paths]
        self.labels = split.labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.transform(self.items[i]), self.labels[i]


class DecodedClassificationTask(Task[P]):
    metric = "accuracy"
    output_names: ClassVar[list[str]] = ["logits"]

    def __init__(self, recipe, backbone) -> None:
        super().__init__(recipe, backbone)
        self._datasets: dict[tuple[int, bool], DecodedFiles] = {}

    def decode(self, data: bytes) -> np.ndarray:
        raise NotImplementedError

    def train_transform(self, item: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def eval_transform(self, item: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def dataset(self, split: ImageExamples, train: bool) -> DecodedFiles:
        key = (id(split), train)
        if key not in self._datasets:
            self._datasets[key] = DecodedFiles(
                split, self.decode, self.train_transform if train else self.eval_transform
            )
        return self._datasets[key]

    def relabel(self, split: ImageExamples, labels: list[int]) -> None:
        split.labels = labels
        for train in (False, True):
            if (cached := self._datasets.get((id(split), train))) is not None:
                cached.labels = labels

    def collate(self, items: list[tuple[np.ndarray, int]]) -> Batch:
        return {self.input_names[0]: torch.from_numpy(np.stack([x for x, _ in items]))}, torch.tensor(
            [y for _, y in items], dtype=torch.long
        )

    def loader(self, split: ImageExamples, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.recipe.train.seed)
        return DataLoader(
            self.dataset(split, train=shuffle),
            batch_size=batch_size or self.recipe.train.batch_size,
            shuffle=shuffle,
            collate_fn=self.collate,
            generator=generator,
        )

    def calibration_inputs(self, splits: Splits, count: int) -> list[dict[str, np.ndarray]]:
        """Training inputs with the server's pre-processing, in batches of 16."""
        data = self.dataset(splits.train, train=False)
        n = min(count, len(data))
        return [
            {self.input_names[0]: np.stack([data[j][0] for j in range(i, min(n, i + 16))])}
            for i in range(0, n, 16)
        ]

    def metrics(self, logits: np.ndarray, targets: np.ndarray, label_names: list[str]) -> dict[str, Any]:
        return classification_metrics(logits, targets, label_names)
