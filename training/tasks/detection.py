"""Object detection (`defect-detection`): an anchor-free, CenterNet-style head on the FPN at stride 4.

The graph answers `maps` [batch, classes + 4, size / 4, size / 4] over the letterboxed input: each
class's centre heat (sigmoid), then the distances from each cell's centre to the box's left, top,
right and bottom edges in input pixels. Decoding (peaks, boxes, NMS, original pixels) is serving's
(serving/processing/regions.py), used here for the metrics too.

Targets: an elliptical Gaussian per box around its centre cell (sigma a sixth of the box's size in
cells, at least 0.6), and the box's edges at the up to 3 x 3 cells around that centre which lie
inside the box. Loss: CenterNet's focal loss on the heat plus twice the GIoU loss of those cells'
boxes. Metrics: COCO mAP@0.5 (`map50`, decisive) and mAP@0.5:0.95 with pycocotools, in original
pixels.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from torch import nn

from serving.processing.regions import detect
from training.evaluate import max_abs_diff
from training.tasks.base import Batch
from training.tasks.dense_image import STRIDE, Decoded, DenseImageTask, Geometry, colour

EVAL_SCORE_THRESHOLD = 0.01  # detections kept for mAP (the served default is higher)
EVAL_MAX_DETECTIONS = 100
MAX_BOX_PARITY_PX = 0.5  # parity: largest box edge difference at cells with heat > 0.1


class CenterHead(nn.Module):
    def __init__(self, classes: int, width: int = 64) -> None:
        super().__init__()

        def branch(out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, out, 1)
            )

        self.heat = branch(classes)
        self.edges = branch(4)
        last = self.heat[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, -2.19)  # a prior of 0.1 on every cell (CenterNet)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heat = torch.sigmoid(self.heat(x))
        edges = torch.exp(self.edges(x).clamp(max=6.0)) * STRIDE
        return torch.cat([heat, edges], dim=1)


def centre_targets(
    boxes: np.ndarray, classes: np.ndarray, num_classes: int, cells: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heat (C, n, n), edges (4, n, n) and box weight (n, n) for boxes in input pixels."""
    heat = np.zeros((num_classes, cells, cells), np.float32)
    edges = np.zeros((4, cells, cells), np.float32)
    weight = np.zeros((cells, cells), np.float32)
    ys, xs = np.mgrid[0:cells, 0:cells].astype(np.float32)
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))  # small boxes last, on top
    for k in order:
        x1, y1, x2, y2 = boxes[k]
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        ci, cj = min(cells - 1, int(cy)), min(cells - 1, int(cx))
        sx = max(0.6, (x2 - x1) / STRIDE / 6)
        sy = max(0.6, (y2 - y1) / STRIDE / 6)
        g = np.exp(-((xs - cj) ** 2) / (2 * sx**2) - ((ys - ci) ** 2) / (2 * sy**2))
        np.maximum(heat[classes[k]], g, out=heat[classes[k]])
        for i in range(max(0, ci - 1), min(cells, ci + 2)):
            for j in range(max(0, cj - 1), min(cells, cj + 2)):
                px, py = (j + 0.5) * STRIDE, (i + 0.5) * STRIDE
                if (x1 < px < x2 and y1 < py < y2) or (i, j) == (ci, cj):
                    edges[:, i, j] = [
                        max(px - x1, 0.5),
                        max(py - y1, 0.5),
                        max(x2 - px, 0.5),
                        max(y2 - py, 0.5),
                    ]
                    weight[i, j] = 1.0
    return heat, edges, weight


def focal_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed and divided by the number of centres."""
    p = predicted.clamp(1e-4, 1 - 1e-4)
    centres = target.eq(1).float()
    positive = -torch.log(p) * (1 - p) ** 2 * centres
    negative = -torch.log(1 - p) * p**2 * (1 - target) ** 4 * (1 - centres)
    return (positive.sum() + negative.sum()) / centres.sum().clamp(min=1)


def giou_loss(predicted: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """1 - GIoU of boxes given as edge distances from the same point, (N, 4, h, w), where weight > 0."""
    keep = weight > 0
    if not keep.any():
        return predicted.sum() * 0.0
    p = predicted.permute(0, 2, 3, 1)[keep]
    t = target.permute(0, 2, 3, 1)[keep]
    area_p = (p[:, 0] + p[:, 2]) * (p[:, 1] + p[:, 3])
    area_t = (t[:, 0] + t[:, 2]) * (t[:, 1] + t[:, 3])
    inter = (torch.minimum(p[:, 0], t[:, 0]) + torch.minimum(p[:, 2], t[:, 2])) * (
        torch.minimum(p[:, 1], t[:, 1]) + torch.minimum(p[:, 3], t[:, 3])
    )
    union = area_p + area_t - inter
    enclosing = (torch.maximum(p[:, 0], t[:, 0]) + torch.maximum(p[:, 2], t[:, 2])) * (
        torch.maximum(p[:, 1], t[:, 1]) + torch.maximum(p[:, 3], t[:, 3])
    )
    giou = inter / union - (enclosing - union) / enclosing
    return (1 - giou).mean()


def coco_map(detections: list, items: list[Decoded], labels: list[str]) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 (pycocotools) of per-image detections against the scenes' boxes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth: dict[str, list] = {
        "images": [
            {"id": i, "height": d.placement.height, "width": d.placement.width} for i, d in enumerate(items)
        ],
        "annotations": [],
        "categories": [{"id": c + 1, "name": n} for c, n in enumerate(labels)],
    }
    for i, d in enumerate(items):
        for (x1, y1, x2, y2), c in zip(d.scene.boxes.tolist(), d.scene.classes.tolist()):
            truth["annotations"].append(
                {
                    "id": len(truth["annotations"]) + 1,
                    "image_id": i,
                    "category_id": c + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    found = [
        {
            "image_id": i,
            "category_id": int(c) + 1,
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "score": float(s),
        }
        for i, det in enumerate(detections)
        for b, s, c in zip(det.boxes.tolist(), det.scores, det.classes)
    ]
    if not found or not truth["annotations"]:
        return {"map50": 0.0, "map50_95": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        gt = COCO()
        gt.dataset = truth
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(found), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"map50": float(evaluation.stats[1]), "map50_95": float(evaluation.stats[0])}


class DetectionTask(DenseImageTask):
    name = "object-detection"
    metric = "map50"
    output_names: ClassVar[list[str]] = ["maps"]
    label_kind = "boxes"

    def build_head(self, classes: int) -> nn.Module:
        return CenterHead(classes)

    def boxes_in_input(self, item: Decoded, geometry: Geometry | None = None) -> np.ndarray:
        boxes = item.placement.to_input(item.scene.boxes).astype(np.float32).reshape(-1, 4)
        return geometry.boxes(boxes, item.placement.content) if geometry else boxes

    def targets_of(self, boxes: np.ndarray, item: Decoded) -> tuple[np.ndarray, ...]:
        cells = self.letterbox.size // STRIDE
        return centre_targets(boxes, item.scene.classes, len(self.recipe.labels or []), cells)

    def train_item(self, item: Decoded) -> tuple:
        canvas, geometry = self.augment(item)
        targets = self.targets_of(self.boxes_in_input(item, geometry), item)
        return (self.letterbox.normalise(canvas), *targets, item)

    def eval_item(self, item: Decoded) -> tuple:
        targets = self.targets_of(self.boxes_in_input(item), item)
        return (self.letterbox.normalise(item.canvas), *targets, item)

    def collate(self, items: list[Any]) -> Batch:
        def stacked(k: int) -> torch.Tensor:
            return torch.from_numpy(np.stack([it[k] for it in items]))

        targets = {
            "heat": stacked(1),
            "edges": stacked(2),
            "weight": stacked(3),
            "items": [it[4] for it in items],
        }
        return {"images": stacked(0)}, targets

    def loss(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        classes = targets["heat"].shape[1]
        return focal_loss(outputs[:, :classes], targets["heat"]) + 2.0 * giou_loss(
            outputs[:, classes:], targets["edges"], targets["weight"]
        )

    def detections(self, outputs: np.ndarray, items: list[Decoded]) -> list:
        return [
            detect(maps, d.placement, self.letterbox.size, EVAL_SCORE_THRESHOLD, EVAL_MAX_DETECTIONS)
            for maps, d in zip(outputs, items)
        ]

    def metrics(self, outputs: np.ndarray, targets: list[Decoded], label_names: list[str]) -> dict[str, Any]:
        return {**coco_map(self.detections(outputs, targets), targets, label_names), "n": len(targets)}

    def parity(self, reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
        """Largest heat difference, and largest box edge difference (input pixels) where there is heat."""
        classes = reference.shape[1] - 4
        hot = (reference[:, :classes].max(1) > 0.1)[:, None].repeat(4, 1)
        edges = np.abs(reference[:, classes:] - candidate[:, classes:])[hot]
        return {
            "max_abs_diff": max_abs_diff(reference[:, :classes], candidate[:, :classes]),
            "box_max_abs_diff_px": float(edges.max()) if edges.size else 0.0,
        }

    def parity_problem(self, report: dict[str, Any], atol: float) -> str | None:
        """The heat's tolerance (the base check), and MAX_BOX_PARITY_PX on the boxes."""
        problems = [super().parity_problem(report, atol)]
        if report["box_max_abs_diff_px"] > MAX_BOX_PARITY_PX:
            problems.append(
                f"box edges differ by {report['box_max_abs_diff_px']:.2f} px (limit {MAX_BOX_PARITY_PX})"
            )
        return ", ".join(p for p in problems if p) or None

    def draw(self, bgr: np.ndarray, item: Decoded, output: np.ndarray, labels: list[str]) -> np.ndarray:
        """True boxes in thin white, predicted boxes (score >= 0.3) in their class's colour."""
        for x1, y1, x2, y2 in item.scene.boxes.astype(int).tolist():
            cv2.rectangle(bgr, (x1, y1), (x2, y2), (255, 255, 255), 1)
        found = detect(output, item.placement, self.letterbox.size, 0.3, 20)
        for box, score, c in zip(found.boxes.astype(int).tolist(), found.scores, found.classes):
            cv2.rectangle(bgr, (box[0], box[1]), (box[2], box[3]), colour(int(c) + 1), 2)
            text = f"{labels[int(c)]} {score:.2f}"
            cv2.putText(
                bgr,
                text,
                (box[0], max(10, box[1] - 3)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.35,
                colour(int(c) + 1),
                1,
            )
        return bgr
