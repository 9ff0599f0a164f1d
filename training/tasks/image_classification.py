"""Image classification: a pretrained CNN backbone, global pooling, a linear head.

Evaluation images go through serving's `decode_image` + `ImagePreprocessor`, byte for byte what the
server does; training images are decoded the same way, then augmented (random resized crop, flips,
small rotations, colour jitter) and scaled by the same `normalise`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from serving.processing import ImagePreprocessor, decode_image
from training.data.images import ImageExamples, load_image_splits
from training.evaluate import classification_metrics, torch_logits
from training.tasks.base import Batch, Splits, Task


class PooledHeadClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Linear, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(images)))


class _Images(Dataset):
    """Decoded RGB images kept in memory (decoding once, not every epoch), transformed per access."""

    def __init__(self, split: ImageExamples, transform) -> None:
        self.images = [decode_image(p.read_bytes()) for p in split.paths]
        self.labels = split.labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.transform(self.images[i]), self.labels[i]


class ImageClassificationTask(Task):
    name = "image-classification"
    modality = "image"
    metric = "accuracy"
    input_names = ["images"]
    output_names = ["logits"]
    dynamic_axes = {"images": {0: "batch"}, "logits": {0: "batch"}}

    def __init__(self, recipe, backbone) -> None:
        super().__init__(recipe, backbone)
        self.preprocessor = ImagePreprocessor(**{k: v for k, v in recipe.preprocessing.items() if k in ("resize_shorter", "crop", "mean", "std")})
        strength = float(recipe.preprocessing.get("augment_strength", 1.0))
        self.augment = v2.Compose([
            v2.RandomResizedCrop(self.preprocessor.crop, scale=(1 - 0.4 * strength, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(p=0.5 * strength),
            v2.RandomRotation(10 * strength),
            v2.ColorJitter(0.25 * strength, 0.25 * strength, 0.25 * strength, 0.02 * strength),
        ])
        self._datasets: dict[tuple[int, bool], _Images] = {}

    def load_data(self) -> Splits:
        d = self.recipe.data
        labels = self.backbone.pretrained_labels() if d.pseudo_labels else self.recipe.labels
        train, val, test, names = load_image_splits(d.source, labels, d.val_fraction, d.test_fraction, d.seed, d.limit)
        return Splits(train, val, test, names)

    def build_model(self, label_names: list[str]) -> nn.Module:
        net = self.backbone.load()
        pretrained = self.backbone.pretrained_labels() if self.backbone.pretrained_labels else None
        classifier = net.get_classifier()
        if label_names == pretrained:
            head = nn.Linear(classifier.in_features, len(label_names))
            head.load_state_dict(classifier.state_dict())
        else:
            head = nn.Linear(classifier.in_features, len(label_names))
        net.reset_classifier(0)
        return PooledHeadClassifier(net, head, self.recipe.train.dropout)

    def prepare(self, model: nn.Module, splits: Splits) -> None:
        """Pseudo-labelled sources (a pretrained classifier exported as is): each image's label is the
        PyTorch model's own top-1, so test metrics measure agreement of ONNX/INT8 with it."""
        if not self.recipe.data.pseudo_labels:
            return
        for split in (splits.train, splits.val, splits.test):
            split.labels = [0] * len(split)
            logits, _ = torch_logits(model, self.loader(split, shuffle=False, batch_size=32))
            split.labels = logits.argmax(-1).tolist()
            for train in (False, True):
                if (dataset := self._datasets.get(self._key(split, train))) is not None:
                    dataset.labels = split.labels

    def _train_transform(self, rgb: np.ndarray) -> np.ndarray:
        chw = self.augment(torch.from_numpy(rgb).permute(2, 0, 1))
        return self.preprocessor.normalise(chw.permute(1, 2, 0).numpy())

    @staticmethod
    def _key(split: ImageExamples, train: bool) -> tuple[int, bool]:
        return id(split), train

    def _dataset(self, split: ImageExamples, train: bool) -> _Images:
        key = self._key(split, train)
        if key not in self._datasets:
            self._datasets[key] = _Images(split, self._train_transform if train else self.preprocessor)
        return self._datasets[key]

    @staticmethod
    def collate(items: list[tuple[np.ndarray, int]]) -> Batch:
        images = torch.from_numpy(np.stack([x for x, _ in items]))
        return {"images": images}, torch.tensor([y for _, y in items], dtype=torch.long)

    def loader(self, split: ImageExamples, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.recipe.train.seed)
        return DataLoader(self._dataset(split, train=shuffle), batch_size=batch_size or self.recipe.train.batch_size, shuffle=shuffle, collate_fn=self.collate, generator=generator)

    def calibration_inputs(self, splits: Splits, count: int) -> list[dict[str, np.ndarray]]:
        """Evaluation-pre-processed training images (what the server feeds), for static quantisation."""
        dataset = self._dataset(splits.train, train=False)
        n = min(count, len(dataset))
        return [{"images": np.stack([dataset[j][0] for j in range(i, min(n, i + 16))])} for i in range(0, n, 16)]

    def metrics(self, logits: np.ndarray, targets: np.ndarray, label_names: list[str]) -> dict[str, Any]:
        out = classification_metrics(logits, targets, label_names)
        if len(label_names) > 20:  # a confusion matrix of 1000 classes helps nobody
            out.pop("confusion_matrix")
            top5 = np.argsort(-logits, axis=-1)[:, :5]
            out["top5_accuracy"] = float(np.mean([t in row for t, row in zip(targets, top5)]))
        return out

    def preprocessing_config(self) -> dict[str, Any]:
        return self.preprocessor.config()
