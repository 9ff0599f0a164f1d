"""Semantic segmentation (`defect-segmentation`): per-pixel classes from the FPN decoder, refined
to stride 2 with the backbone's first stage (scratches and cracks are a few pixels wide).

The graph answers `logits` [batch, classes, size / 2, size / 2] over the letterboxed input; the
server (and the metrics here) map them onto the original image (serving/processing/regions.py).
Label 0 is the background. Loss: cross-entropy of the logits upsampled to the input, the padding
ignored. Decisive metric `miou`: the mean IoU of the defect classes over the whole split, in
original pixels, as served.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from serving.processing.regions import segment
from training.evaluate import max_abs_diff
from training.tasks.base import Batch
from training.tasks.dense_image import Decoded, DenseImageTask, colour

IGNORE_PIXEL = 255  # letterbox padding: no loss
MIN_PIXEL_AGREEMENT = 0.999  # parity: share of pixels whose class an exported engine must keep


def segmentation_head(classes: int, width: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, classes, 1),
    )


def iou_table(
    outputs: np.ndarray, items: list[Decoded], labels: list[str], input_size: int
) -> dict[str, Any]:
    """IoU per class over a split (intersections and unions summed over images), in original pixels."""
    inter = np.zeros(len(labels))
    union = np.zeros(len(labels))
    for logits, item in zip(outputs, items):
        predicted = segment(logits, item.placement, input_size).full_mask()
        truth = cv2.imread(str(item.scene.mask), cv2.IMREAD_UNCHANGED)
        for c in range(len(labels)):
            p, t = predicted == c, truth == c
            inter[c] += np.logical_and(p, t).sum()
            union[c] += np.logical_or(p, t).sum()
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    out: dict[str, Any] = {f"iou_{label}": float(v) for label, v in zip(labels, iou)}
    out["miou"] = float(np.nanmean(iou[1:])) if len(labels) > 1 else float("nan")
    out["miou_with_background"] = float(np.nanmean(iou))
    out["n"] = len(items)
    return out


class SegmentationTask(DenseImageTask):
    name = "image-segmentation"
    metric = "miou"
    output_names: ClassVar[list[str]] = ["logits"]
    label_kind = "masks"
    stride = 2

    def build_head(self, classes: int) -> nn.Module:
        return segmentation_head(classes, width=32)

    def decode(self, scene) -> Decoded:
        item = super().decode(scene)
        assert scene.mask is not None
        truth = cv2.imread(str(scene.mask), cv2.IMREAD_UNCHANGED)
        if truth is None or truth.ndim != 2 or truth.shape != (item.placement.height, item.placement.width):
            raise ValueError(f"{scene.mask}: not a single-channel mask the size of {scene.image.name}")
        item.mask = self.letterbox.resize_mask(truth, item.placement, IGNORE_PIXEL)
        return item

    def train_item(self, item: Decoded) -> tuple[np.ndarray, np.ndarray, Decoded]:
        canvas, geometry = self.augment(item)
        assert item.mask is not None
        mask = geometry.apply(item.mask, item.placement.content)
        return self.letterbox.normalise(canvas), mask, item

    def eval_item(self, item: Decoded) -> tuple[np.ndarray, np.ndarray, Decoded]:
        assert item.mask is not None
        return self.letterbox.normalise(item.canvas), item.mask, item

    def collate(self, items: list[Any]) -> Batch:
        images = torch.from_numpy(np.stack([x for x, _, _ in items]))
        masks = torch.from_numpy(np.stack([m for _, m, _ in items]).astype(np.int64))
        return {"images": images}, {"mask": masks, "items": [d for _, _, d in items]}

    def loss(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        """Cross-entropy plus the soft Dice loss of the defect classes: thin defects cover few pixels,
        and Dice weighs each class's overlap rather than its pixel count."""
        mask = targets["mask"]
        logits = F.interpolate(outputs, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        cross_entropy = F.cross_entropy(logits, mask, ignore_index=IGNORE_PIXEL)
        inside = (mask != IGNORE_PIXEL).unsqueeze(1)
        probs = logits.softmax(1) * inside
        truth = F.one_hot(mask.clamp(max=outputs.shape[1] - 1), outputs.shape[1]).permute(0, 3, 1, 2) * inside
        dims = (0, 2, 3)
        overlap = (probs * truth).sum(dims)[1:]
        dice = (2 * overlap + 1) / (probs.sum(dims)[1:] + truth.sum(dims)[1:] + 1)
        return cross_entropy + (1 - dice).mean()

    def metrics(self, outputs: np.ndarray, targets: list[Decoded], label_names: list[str]) -> dict[str, Any]:
        return iou_table(outputs, targets, label_names, self.letterbox.size)

    def parity(self, reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
        """Largest logit difference, and the share of output cells whose class is the same."""
        return {
            "max_abs_diff": max_abs_diff(reference, candidate),
            "pixel_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
        }

    def parity_problem(self, report: dict[str, Any], atol: float) -> str | None:
        problems = [super().parity_problem(report, atol)]
        if report["pixel_agreement"] < MIN_PIXEL_AGREEMENT:
            problems.append(f"{report['pixel_agreement']:.4%} of cells keep their class")
        return ", ".join(p for p in problems if p) or None

    def draw(self, bgr: np.ndarray, item: Decoded, output: np.ndarray, labels: list[str]) -> np.ndarray:
        """The predicted classes tinted over the image, each instance's outline and label."""
        seg = segment(output, item.placement, self.letterbox.size)
        mask = seg.full_mask()
        tint = np.array([colour(c) for c in range(len(labels))], np.uint8)[mask]
        shown = np.where(mask[..., None] > 0, (0.5 * bgr + 0.5 * tint).astype(np.uint8), bgr)
        for inst in seg.instances(labels):
            c = labels.index(inst["label"])
            cv2.polylines(shown, [np.round(inst["polygon"]).astype(np.int32)], True, colour(c), 1)
            x1, y1 = int(inst["box"][0]), int(inst["box"][1])
            cv2.putText(
                shown, inst["label"], (x1, max(10, y1 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour(c), 1
            )
        return shown
