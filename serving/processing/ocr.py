"""Reading text in images with the PP-OCR models (a DB text detector, an orientation classifier and a
CTC recogniser), in numpy and OpenCV.

    image (BGR) ─► scale ─► detector ─► probability map ─► DB post-processing: text boxes
      ─► each box cut out and straightened (perspective warp: deskew)
      ─► orientation classifier (turn crops that read upside down) ─► recogniser ─► CTC decoding
      ─► boxes grouped into lines (words of one line, even slightly rotated) in reading order

DB post-processing: the map thresholded and dilated, each connected region's minimum-area
rectangle kept when the mean probability inside is high enough, then grown by
`area × unclip_ratio / perimeter` on every side (the detector was trained on shrunk text regions).
For a rectangle, offsetting by that distance with round corners and taking the minimum-area rectangle
again gives exactly the rectangle grown by the distance on each side, which is what is computed here.
CTC decoding: the best class per time step, repeats merged, blanks (class 0) dropped; the classes
are the dictionary stored in the recogniser's ONNX metadata (`character`, one a line) and a space.
Every step of an image depends on that image only (the recogniser's batches are its own lines), so
an image's answer never depends on what else the server is reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np

Run = Callable[[np.ndarray], np.ndarray]  # one ONNX model: input batch → first output


@dataclass(frozen=True)
class OcrConfig:
    """The pipeline's parameters (the manifest's `preprocessing`, PP-OCR's defaults)."""

    max_side: int = 2000  # larger images are scaled down first
    min_height: int = 30  # shorter images, and ones wider than `letterbox_ratio`, get bands above and below
    letterbox_ratio: float = 8.0
    det_min_side: int = 736  # the detector sees the shorter side at least this long, multiples of 32
    det_max_side: int = 4000  # ... and the longer side at most this long (a 1-pixel-wide image
    # scaled by the rule above alone would be tens of millions of pixels)
    det_thresh: float = 0.3  # a pixel is text above this probability
    box_thresh: float = 0.5  # a region is kept when its mean probability reaches this
    unclip_ratio: float = 1.6
    max_candidates: int = 1000
    min_box: int = 3  # pixels: a box's shorter side must exceed this
    cls_height: int = 48
    cls_width: int = 192
    cls_thresh: float = 0.9  # a crop is turned when the classifier says 180° this surely
    rec_height: int = 48
    rec_width: int = 320  # the recogniser's narrowest input; wider lines widen their batch
    batch: int = 6  # crops per classifier and recogniser call
    text_score: float = 0.5  # lines read with a lower mean confidence are dropped

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OcrConfig:
        names = {f.name: f.type for f in fields(cls)}  # "int" or "float": the annotations as strings
        values: dict[str, Any] = {
            k: int(v) if names[k] == "int" else float(v) for k, v in config.items() if k in names
        }
        return cls(**values)

    def config(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Line:
    text: str
    score: float
    box: list[
        list[float]
    ]  # four corners in the original image: top-left, top-right, bottom-right, bottom-left


def normalise(bgr: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) → (3, H, W) float32 in [-1, 1], as PP-OCR's models were trained."""
    return (bgr.astype(np.float32) * (2 / 255) - 1).transpose(2, 0, 1)


def detector_input(bgr: np.ndarray, min_side: int, max_side: int) -> np.ndarray:
    """Scaled so the shorter side is at least `min_side` but the longer one at most `max_side`
    (never scaled down), both sides multiples of 32."""
    h, w = bgr.shape[:2]
    ratio = max(1.0, min(min_side / min(h, w), max_side / max(h, w)))
    size = (max(32, round(int(w * ratio) / 32) * 32), max(32, round(int(h * ratio) / 32) * 32))
    return normalise(cv2.resize(bgr, size))[None]


def ordered_corners(rect: Any) -> np.ndarray:
    """A cv2 rotated rectangle's corners as top-left, top-right, bottom-right, bottom-left."""
    points = sorted(cv2.boxPoints(rect).tolist(), key=lambda p: p[0])
    left = sorted(points[:2], key=lambda p: p[1])
    right = sorted(points[2:], key=lambda p: p[1])
    return np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)


def region_score(probability: np.ndarray, corners: np.ndarray) -> float:
    """Mean probability inside the quadrilateral."""
    h, w = probability.shape
    x0, y0 = np.clip(np.floor(corners.min(0)).astype(int), 0, [w - 1, h - 1])
    x1, y1 = np.clip(np.ceil(corners.max(0)).astype(int), 0, [w - 1, h - 1])
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    cv2.fillPoly(mask, [(corners - [x0, y0]).astype(np.int32)], 1)
    return float(cv2.mean(probability[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


def text_boxes(probability: np.ndarray, config: OcrConfig) -> list[tuple[np.ndarray, float]]:
    """DB post-processing of the detector's (H, W) map: boxes (corners in map pixels) and scores."""
    bitmap = cv2.dilate((probability > config.det_thresh).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for contour in contours[: config.max_candidates]:
        rect = cv2.minAreaRect(contour)
        if min(rect[1]) < config.min_box:
            continue
        score = region_score(probability, ordered_corners(rect))
        if score < config.box_thresh:
            continue
        (cx, cy), (rw, rh), angle = rect
        distance = rw * rh * config.unclip_ratio / (2 * (rw + rh))
        grown = ((cx, cy), (rw + 2 * distance, rh + 2 * distance), angle)
        if min(grown[1]) < config.min_box + 2:
            continue
        boxes.append((ordered_corners(grown), score))
    return boxes


def reading_order(boxes: list[np.ndarray], max_gap: float = 2.0) -> list[list[int]]:
    """The boxes (corners) grouped into lines, lines top to bottom and boxes left to right. Taken
    from left to right, a box joins a line when its centre lies within half the taller text height
    of the line as followed from the line's box reaching furthest right (not a speck the detector
    found inside the line) along that box's slant, so a slightly rotated line stays one line; and
    when the gap to that box is at most `max_gap` text heights, so columns stay apart."""
    geometry = []
    for tl, tr, br, bl in boxes:
        dx = float(tr[0] - tl[0])
        geometry.append(
            (
                float((tl[0] + tr[0] + br[0] + bl[0]) / 4),
                float((tl[1] + tr[1] + br[1] + bl[1]) / 4),
                float((np.linalg.norm(bl - tl) + np.linalg.norm(br - tr)) / 2),
                float(tr[1] - tl[1]) / dx if abs(dx) > 1e-6 else 0.0,
                float(min(tl[0], bl[0])),
                float(max(tr[0], br[0])),
            )
        )
    lines: list[list[int]] = []  # grown left to right
    for i in sorted(range(len(boxes)), key=lambda i: geometry[i][4]):
        x, y, height, _, left, right = geometry[i]
        for line in lines:
            j = max(line, key=lambda j: geometry[j][5])  # the box reaching furthest right so far
            jx, jy, jheight, slope, jleft, jright = geometry[j]
            gap = max(left - jright, jleft - right, 0.0)
            if abs(y - (jy + slope * (x - jx))) < 0.5 * max(height, jheight) and gap <= max_gap * max(
                height, jheight
            ):
                line.append(i)
                break
        else:
            lines.append([i])
    return sorted(lines, key=lambda line: geometry[line[0]][1])  # by the height of their first box


def enclosing(corners: list[np.ndarray]) -> np.ndarray:
    """The minimum-area rectangle around several boxes, as ordered corners."""
    return ordered_corners(cv2.minAreaRect(np.concatenate(corners).astype(np.float32)))


def straighten(bgr: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """The quadrilateral cut out and warped into an upright rectangle; a tall result (a vertical
    line) is turned to lie along the reading direction."""
    width = int(max(np.linalg.norm(corners[0] - corners[1]), np.linalg.norm(corners[2] - corners[3])))
    height = int(max(np.linalg.norm(corners[0] - corners[3]), np.linalg.norm(corners[1] - corners[2])))
    width, height = max(width, 1), max(height, 1)
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    crop = cv2.warpPerspective(
        bgr,
        cv2.getPerspectiveTransform(corners.astype(np.float32), target),
        (width, height),
        borderMode=cv2.BORDER_REPLICATE,
        flags=cv2.INTER_CUBIC,
    )
    return np.rot90(crop) if height / width >= 1.5 else crop


def fit_height(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scaled to `height` keeping its aspect (at most `width` wide), normalised, zero-padded on the
    right to `width`: (3, height, width)."""
    h, w = crop.shape[:2]
    scaled = min(width, math.ceil(height * w / h))
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :scaled] = normalise(cv2.resize(np.ascontiguousarray(crop), (scaled, height)))
    return out


def ctc_decode(probabilities: np.ndarray, characters: list[str]) -> tuple[str, float]:
    """(T, classes) → text and its mean confidence: best class per step, repeats merged, blanks
    (class 0) dropped; `characters[i - 1]` is class i's text."""
    best, confidence = probabilities.argmax(1), probabilities.max(1)
    keep = best != 0
    keep[1:] &= best[1:] != best[:-1]
    if not keep.any():
        return "", 0.0
    return "".join(characters[i - 1] for i in best[keep]), float(confidence[keep].mean())


class TextReader:
    """The three models and the steps between them; `read` answers one image."""

    def __init__(
        self, detector: Run, orientation: Run, recogniser: Run, characters: list[str], config: OcrConfig
    ):
        self.detector, self.orientation, self.recogniser = detector, orientation, recogniser
        self.characters, self.config = characters, config

    def read(self, bgr: np.ndarray) -> list[Line]:
        c = self.config
        h, w = bgr.shape[:2]
        scale = min(1.0, c.max_side / max(h, w))
        if scale < 1:
            bgr = cv2.resize(
                bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
        band = 0
        if bgr.shape[0] <= c.min_height or bgr.shape[1] / bgr.shape[0] > c.letterbox_ratio:
            band = abs(max(int(bgr.shape[1] / c.letterbox_ratio), c.min_height) * 2 - bgr.shape[0]) // 2
            bgr = cv2.copyMakeBorder(bgr, band, band, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        probability = self.detector(detector_input(bgr, c.det_min_side, c.det_max_side))[0, 0]
        ph, pw = probability.shape
        sh, sw = bgr.shape[0] / ph, bgr.shape[1] / pw
        boxes = []
        for corners, _ in text_boxes(probability, c):
            corners = np.clip(np.round(corners * [sw, sh]), 0, [bgr.shape[1] - 1, bgr.shape[0] - 1])
            if (
                min(np.linalg.norm(corners[0] - corners[1]), np.linalg.norm(corners[0] - corners[3]))
                > c.min_box
            ):
                boxes.append(corners.astype(np.float32))
        # one crop per line: the detector often splits a line into overlapping pieces, whose shared
        # letters would be read twice
        boxes = [
            boxes[m[0]] if len(m) == 1 else enclosing([boxes[i] for i in m]) for m in reading_order(boxes)
        ]
        crops = self.upright([straighten(bgr, b) for b in boxes])
        lines = []
        for corners, (text, score) in zip(boxes, self.recognise(crops)):
            if text.strip() and score >= c.text_score:
                original = (corners - [0, band]) / scale
                lines.append(Line(text.strip(), round(score, 4), np.round(original, 1).tolist()))
        return lines

    def _batches(self, crops: list[np.ndarray]) -> list[list[int]]:
        """Indices of crops in batches of similar width (ordered by aspect ratio)."""
        order = sorted(range(len(crops)), key=lambda i: crops[i].shape[1] / crops[i].shape[0])
        return [order[i : i + self.config.batch] for i in range(0, len(order), self.config.batch)]

    def upright(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        c = self.config
        out = list(crops)
        for batch in self._batches(crops):
            probs = self.orientation(
                np.stack([fit_height(crops[i], c.cls_height, c.cls_width) for i in batch])
            )
            for i, p in zip(batch, probs):
                if p.argmax() == 1 and p[1] > c.cls_thresh:  # classes: 0°, 180°
                    out[i] = cv2.rotate(np.ascontiguousarray(crops[i]), cv2.ROTATE_180)
        return out

    def recognise(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        c = self.config
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        for batch in self._batches(crops):
            ratio = max(c.rec_width / c.rec_height, *(crops[i].shape[1] / crops[i].shape[0] for i in batch))
            width = int(c.rec_height * ratio)
            probs = self.recogniser(np.stack([fit_height(crops[i], c.rec_height, width) for i in batch]))
            for i, p in zip(batch, probs):
                results[i] = ctc_decode(p, self.characters)
        return results


def dictionary(metadata: dict[str, str]) -> list[str]:
    """The recogniser's classes after the blank: its metadata's `character` lines, then a space."""
    if "character" not in metadata:
        raise ValueError("the recogniser's ONNX metadata holds no `character` dictionary")
    return [*metadata["character"].splitlines(), " "]
