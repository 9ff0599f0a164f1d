"""Image classification: a pretrained CNN backbone, global pooling, a linear head.

Evaluation images go through serving's `decode_image` + `ImagePreprocessor`, byte for byte what the
server does; training images are decoded the same way, then augmented (random resized crop, flips,
small rotations, colour jitter) and scaled by the same `normalise`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torchvision.transforms import v2

from serving.processing import ImagePreprocessor, decode_image
from serving.processing.image import MAX_IMAGE_PIXELS
from training.backbones import TimmClassifier
from training.data.images import load_image_splits
from training.evaluate import torch_outputs
from training.tasks.base import Preprocessing, Splits
from training.tasks.decoded import DecodedClassificationTask


class ImagePreprocessing(Preprocessing):
    """The server's `ImagePreprocessor` parameters; augment_strength scales the random resized crop,
    flips, rotation and colour jitter of training images."""

    resize_shorter: int = Field(ImagePreprocessor.resize_shorter, ge=1)
    crop: int = Field(ImagePreprocessor.crop, ge=1)
    mean: float = ImagePreprocessor.mean
    std: float = Field(ImagePreprocessor.std, gt=0)


class PooledHeadClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Linear, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(images)))


class ImageClassificationTask(DecodedClassificationTask[ImagePreprocessing]):
    name = "image-classification"
    modality = "image"
    input_names: ClassVar[list[str]] = ["images"]
    channels_last = True
    dynamic_axes: ClassVar[dict[str, dict[int, str]]] = {"images": {0: "batch"}, "logits": {0: "batch"}}
    preprocessing_model = ImagePreprocessing

    def __init__(self, recipe, backbone) -> None:
        super().__init__(recipe, backbone)
        self.preprocessor = ImagePreprocessor(**self.options.model_dump(exclude={"augment_strength"}))
        strength = self.options.augment_strength
        self.augment = v2.Compose(
            [
                v2.RandomResizedCrop(self.preprocessor.crop, scale=(1 - 0.4 * strength, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(p=0.5 * strength),
                v2.RandomRotation(10 * strength),
                v2.ColorJitter(0.25 * strength, 0.25 * strength, 0.25 * strength, 0.02 * strength),
            ]
        )

    def load_data(self) -> Splits:
        d = self.recipe.data
        labels = self.recipe.labels
        if d.pseudo_labels:
            if self.backbone.pretrained_labels is None:
                raise ValueError(
                    f"recipe {self.recipe.name!r}: data.pseudo_labels needs a backbone with a pretrained "
                    f"classifier; {self.backbone.name} has none"
                )
            labels = self.backbone.pretrained_labels()
        train, val, test, names = load_image_splits(
            d.source, labels, d.val_fraction, d.test_fraction, d.seed, d.limit, self.progress
        )
        return Splits(train, val, test, names)

    def build_model(self, label_names: list[str]) -> nn.Module:
        net = self.backbone.load()
        timm_net = cast(TimmClassifier, net)  # image backbones are timm models
        pretrained = self.backbone.pretrained_labels() if self.backbone.pretrained_labels else None
        classifier = timm_net.get_classifier()
        if label_names == pretrained:
            head = nn.Linear(classifier.in_features, len(label_names))
            head.load_state_dict(classifier.state_dict())
        else:
            head = nn.Linear(classifier.in_features, len(label_names))
        timm_net.reset_classifier(0)
        return PooledHeadClassifier(net, head, self.recipe.train.dropout)

    def prepare(self, model: nn.Module, splits: Splits) -> None:
        """Pseudo-labelled sources (a pretrained classifier exported as is): each image's label is the
        PyTorch model's own top-1, so test metrics measure agreement of ONNX/INT8 with it."""
        if not self.recipe.data.pseudo_labels:
            return
        for split in (splits.train, splits.val, splits.test):
            self.relabel(split, [0] * len(split))
            logits, _ = torch_outputs(model, self, self.loader(split, shuffle=False, batch_size=32))
            self.relabel(split, logits.argmax(-1).tolist())

    def decode(self, data: bytes) -> np.ndarray:
        """As the server decodes (a large JPEG at the reduced scale the model needs), but without the
        server's decoded-size limit, which guards against untrusted uploads, not local files."""
        return decode_image(
            data, max_decoded_pixels=MAX_IMAGE_PIXELS, min_side=self.preprocessor.resize_shorter
        )

    def train_transform(self, rgb: np.ndarray) -> np.ndarray:
        chw = self.augment(torch.from_numpy(rgb).permute(2, 0, 1))
        return self.preprocessor.normalise(chw.permute(1, 2, 0).numpy())

    def eval_transform(self, rgb: np.ndarray) -> np.ndarray:
        return self.preprocessor(rgb)

    def metrics(self, logits: np.ndarray, targets: np.ndarray, label_names: list[str]) -> dict[str, Any]:
        out = super().metrics(logits, targets, label_names)
        if len(label_names) > 20:  # a confusion matrix of 1000 classes helps nobody
            out.pop("confusion_matrix")
            top5 = np.argsort(-logits, axis=-1)[:, :5]
            out["top5_accuracy"] = float(np.mean([t in row for t, row in zip(targets, top5)]))
        return out

    def figures(
        self, folder: Path, outputs: np.ndarray, targets: np.ndarray, splits: Splits, metrics: dict[str, Any]
    ) -> dict[str, Path]:
        """The confusion matrix and a grid of misclassified test images (as decoded, before the
        resize and crop), grouped by true class."""
        from training import figures

        drawn = super().figures(folder, outputs, targets, splits, metrics)
        mistakes = figures.misclassified_images(
            folder / "mistakes.png",
            self.dataset(splits.test, train=False).items,
            targets,
            outputs.argmax(-1),
            splits.label_names,
            title=f"{self.recipe.name}: test split",
        )
        if mistakes is not None:
            drawn["mistakes"] = mistakes
        return drawn

    def preprocessing_config(self) -> dict[str, Any]:
        return self.preprocessor.config()
