"""Letterboxing for dense image tasks (segmentation, detection), shared by training and serving.

An image of any size is scaled so that its longer side is `size` (aspect kept), placed in the
top-left corner of a `size` x `size` canvas filled with the normalisation mean (0 after scaling),
and scaled (x - mean) / std like classification. `Placement` records the scale and the content's
extent, so that the model's outputs map back to the original image: boxes and points by
`to_original`, score maps by `crop_content` then a resize to the original size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Placement:
    """Where an original image of `height` x `width` lies in the letterboxed input: scaled by
    `scale` (input pixels per original pixel), from the top-left corner."""

    height: int
    width: int
    scale: float

    @property
    def content(self) -> tuple[int, int]:
        """(height, width) of the image inside the input, in input pixels."""
        return max(1, round(self.height * self.scale)), max(1, round(self.width * self.scale))

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Input-pixel coordinates (..., 2k) as x, y pairs → original-image pixels, clipped to the image."""
        out = np.asarray(xy, dtype=np.float64) / self.scale
        out[..., 0::2] = np.clip(out[..., 0::2], 0, self.width)
        out[..., 1::2] = np.clip(out[..., 1::2], 0, self.height)
        return out

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        """Original-image coordinates (x, y pairs) → input pixels (training targets)."""
        return np.asarray(xy, dtype=np.float64) * self.scale


@dataclass(frozen=True)
class Letterbox:
    """Scale the longer side to `size`, pad bottom and right, scale (x - mean) / std, HWC → CHW."""

    size: int = 256
    mean: float = 127.0
    std: float = 128.0

    @classmethod
    def from_config(cls, config: dict) -> Letterbox:
        return cls(int(config["size"]), float(config["mean"]), float(config["std"]))

    def config(self) -> dict:
        return {
            "size": self.size,
            "mean": self.mean,
            "std": self.std,
            "colour": "RGB",
            "layout": "NCHW",
            "resize": "longer side to size, area interpolation when shrinking; padded bottom and right with the mean",
        }

    def place(self, height: int, width: int) -> Placement:
        return Placement(height, width, self.size / max(height, width))

    def resize(self, rgb: np.ndarray) -> tuple[np.ndarray, Placement]:
        """(H, W, 3) uint8 → (size, size, 3) uint8 letterboxed, and where the image lies in it."""
        placement = self.place(*rgb.shape[:2])
        h, w = placement.content
        interpolation = cv2.INTER_AREA if placement.scale < 1 else cv2.INTER_LINEAR
        canvas = np.full((self.size, self.size, 3), round(self.mean), np.uint8)
        canvas[:h, :w] = cv2.resize(rgb, (w, h), interpolation=interpolation)
        return canvas, placement

    def resize_mask(self, mask: np.ndarray, placement: Placement, fill: int) -> np.ndarray:
        """A class-index mask of the original image → the letterboxed input's (nearest), `fill` outside."""
        h, w = placement.content
        canvas = np.full((self.size, self.size), fill, np.uint8)
        canvas[:h, :w] = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        return canvas

    def normalise(self, rgb_uint8: np.ndarray) -> np.ndarray:
        return ((rgb_uint8.astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1).copy()

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, Placement]:
        canvas, placement = self.resize(rgb)
        return self.normalise(canvas), placement


def to_original_grid(
    maps: np.ndarray, placement: Placement, input_size: int, scale: float = 1.0
) -> np.ndarray:
    """(C, h, w) output maps over the letterboxed input → (C, H, W) over the original image (times
    `scale`, e.g. 0.5 for a work copy of a large image), bilinear. Cell (i, j) covers input pixels
    around ((j + 0.5) * stride, (i + 0.5) * stride); each output pixel centre is mapped back into
    the cells exactly, so no half-cell shift creeps in whatever the sizes."""
    channels, cells = maps.shape[0], maps.shape[-1]
    height, width = max(1, round(placement.height * scale)), max(1, round(placement.width * scale))
    a = placement.scale * cells / input_size / scale  # cells per output pixel
    b = 0.5 * a - 0.5
    matrix = np.array([[a, 0.0, b], [0.0, a, b]], np.float64)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = np.empty((channels, height, width), np.float32)
    for c in range(channels):
        out[c] = cv2.warpAffine(
            np.ascontiguousarray(maps[c], np.float32),
            matrix,
            (width, height),
            flags=flags,
            borderMode=cv2.BORDER_REPLICATE,
        )
    return out
