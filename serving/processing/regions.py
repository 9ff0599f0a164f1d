"""Post-processing of dense image models, shared by training (metrics, pictures) and serving.

Segmentation: per-class logits over the letterboxed input → a class-index mask of the original
image (pixel = class index, 0 = background), the area of each class, and one instance per
connected region of a class (its box and outline polygon from OpenCV's contours, its score the mean
softmax probability of its class inside it).

Detection: the model's maps over the letterboxed input, CenterNet-style: channels [0, C) are each
class's centre heat (probabilities), channels [C, C + 4) the distances from a cell's centre to the
box's left, top, right and bottom edges in input pixels. A detection is a local maximum of the heat
(3 x 3), its box read at that cell, mapped to original pixels; overlapping boxes of one class are
suppressed (NMS, greedy, IoU 0.5).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from serving.processing.letterbox import Placement, to_original_grid

MAX_WORK_SIDE = 1024  # masks of larger images are computed at this size and scaled up (nearest)
MIN_REGION_PIXELS = 4  # smaller regions (at the work size) are not reported as instances
NMS_IOU = 0.5


@dataclass
class Segmentation:
    """A class-index mask of an image at `scale` x its original size (1 unless the image is larger
    than MAX_WORK_SIDE), with each pixel's class logits."""

    mask: np.ndarray  # (H, W) uint8
    logits: np.ndarray  # (C, H, W) float32
    placement: Placement
    scale: float

    def areas(self, labels: list[str]) -> dict[str, float]:
        counts = np.bincount(self.mask.ravel(), minlength=len(labels))
        return {label: float(c / self.mask.size) for label, c in zip(labels, counts)}

    def instances(self, labels: list[str]) -> list[dict[str, Any]]:
        """One per connected region of each non-background class: label, score, box, polygon, in
        original-image pixels."""
        out: list[dict[str, Any]] = []
        for c in range(1, len(labels)):
            binary = (self.mask == c).astype(np.uint8)
            # labelled within the class's bounding rectangle: defects cover a small part of an image
            left, top, width, height = cv2.boundingRect(binary)
            if width == 0:
                continue
            count, regions, stats, _ = cv2.connectedComponentsWithStats(
                binary[top : top + height, left : left + width], connectivity=8
            )
            for r in range(1, count):
                x, y, w, h, area = stats[r]
                if area < MIN_REGION_PIXELS:
                    continue
                region = regions[y : y + h, x : x + w] == r
                x, y = x + left, y + top
                contours, _ = cv2.findContours(
                    region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
                )
                outline = max(contours, key=cv2.contourArea)
                outline = cv2.approxPolyDP(outline, 1.0, True).reshape(-1, 2) + [x, y]
                score = float(self.probability(c, region, (x, y)).mean())
                out.append(
                    {
                        "label": labels[c],
                        "score": round(score, 4),
                        "box": [round(v / self.scale, 1) for v in (x, y, x + w, y + h)],
                        "polygon": [
                            [round(px / self.scale, 1), round(py / self.scale, 1)] for px, py in outline
                        ],
                    }
                )
        out.sort(key=lambda i: -float(i["score"]))
        return out

    def probability(self, c: int, region: np.ndarray, corner: tuple[int, int]) -> np.ndarray:
        """Class `c`'s softmax probability at a region's pixels (a box's mask, from its top-left
        corner): computed for the regions answered, not for the whole image."""
        x, y = corner
        h, w = region.shape
        z = self.logits[:, y : y + h, x : x + w][:, region]
        z = np.exp(z - z.max(axis=0, keepdims=True))
        return z[c] / z.sum(axis=0)

    def full_mask(self) -> np.ndarray:
        """The mask at the original image's size."""
        p = self.placement
        if self.mask.shape == (p.height, p.width):
            return self.mask
        return cv2.resize(self.mask, (p.width, p.height), interpolation=cv2.INTER_NEAREST)


def segment(logits: np.ndarray, placement: Placement, input_size: int) -> Segmentation:
    """(C, h, w) logits over the letterboxed input → the original image's segmentation."""
    scale = min(1.0, MAX_WORK_SIDE / max(placement.height, placement.width))
    grid = to_original_grid(logits, placement, input_size, scale)
    return Segmentation(argmax_classes(grid), grid, placement, scale)


def argmax_classes(grid: np.ndarray) -> np.ndarray:
    """(C, H, W) → (H, W) uint8 index of each pixel's largest channel, the first on ties (as argmax):
    one pass per channel over contiguous planes, several times faster than argmax over axis 0."""
    best = grid[0].copy()
    index = np.zeros(grid.shape[1:], np.uint8)
    for c in range(1, grid.shape[0]):
        higher = grid[c] > best
        index[higher] = c
        np.maximum(best, grid[c], out=best)
    return index


def mask_png(mask: np.ndarray) -> str:
    """A class-index mask as a base64 PNG (8-bit grey, pixel = class index)."""
    ok, encoded = cv2.imencode(".png", mask)
    assert ok
    return base64.b64encode(encoded.tobytes()).decode("ascii")


# --- detection ------------------------------------------------------------------------------------


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [x1, y1, x2, y2] box with each of (n, 4) boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Indices kept by greedy per-class non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(scores), bool)
    for rank, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        rest = order[rank + 1 :]
        same = rest[(classes[rest] == classes[i]) & ~suppressed[rest]]
        if len(same):
            suppressed[same[box_iou(boxes[i], boxes[same]) > iou]] = True
    return np.array(keep, dtype=np.int64)


@dataclass
class Detections:
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2 in original pixels
    scores: np.ndarray  # (n,)
    classes: np.ndarray  # (n,) class index

    def answer(self, labels: list[str]) -> list[dict]:
        return [
            {
                "label": labels[int(c)],
                "score": round(float(s), 4),
                "box": [round(float(v), 1) for v in b],
            }
            for b, s, c in zip(self.boxes, self.scores, self.classes)
        ]


def detect(
    maps: np.ndarray,
    placement: Placement,
    input_size: int,
    score_threshold: float,
    max_detections: int,
    candidates: int = 100,
) -> Detections:
    """(C + 4, h, w) maps of one image → its detections in original pixels, best first."""
    classes = maps.shape[0] - 4
    heat, distances = maps[:classes], maps[classes:]
    stride = input_size / maps.shape[-1]
    # local maxima of each class's heat, inside the image's part of the input
    kernel = np.ones((3, 3), np.uint8)
    peaks = heat == np.stack([cv2.dilate(np.ascontiguousarray(m, np.float32), kernel) for m in heat])
    h, w = placement.content
    peaks[:, int(np.ceil(h / stride)) :, :] = False
    peaks[:, :, int(np.ceil(w / stride)) :] = False
    scores = np.where(peaks & (heat >= score_threshold), heat, 0.0).ravel()
    top = np.argsort(-scores, kind="stable")[:candidates]
    top = top[scores[top] > 0]
    c, i, j = np.unravel_index(top, heat.shape)
    cx, cy = (j + 0.5) * stride, (i + 0.5) * stride
    left, up, right, down = distances[:, i, j]
    boxes = placement.to_original(np.stack([cx - left, cy - up, cx + right, cy + down], axis=1))
    keep = nms(boxes, scores[top], c)[:max_detections]
    return Detections(boxes[keep], scores[top][keep], c[keep])
