"""The shared half of dense image tasks (segmentation, detection): the pretrained EfficientNet-Lite0's
feature pyramid under a light FPN decoder at stride 4, letterboxed inputs, scenes decoded once.

Every image goes through serving's `decode_image` and `Letterbox` (serving/processing/letterbox.py),
byte for byte what the server does; training images are then jittered in brightness and contrast,
flipped and transposed (`Geometry`: the padding stays bottom and right, as in serving). Targets are made from the letterboxed labels; metrics are computed in original-image
pixels through serving's own post-processing (serving/processing/regions.py), so the test metrics
are those of the served answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from serving.processing import decode_image
from serving.processing.image import MAX_IMAGE_PIXELS
from serving.processing.letterbox import Letterbox, Placement
from training.data.defect_scenes import Scene, load_scene_splits
from training.tasks.base import Batch, Preprocessing, Splits, Task

# timm tf_efficientnet_lite0 stages whose outputs form the pyramid: strides 4, 8, 16, 32
PYRAMID_STAGES = (1, 2, 4, 6)
PYRAMID_CHANNELS = (24, 40, 112, 320)
STRIDE = 4  # of the FPN's output (detection's maps); segmentation refines it to 2


class DensePreprocessing(Preprocessing):
    """The server's `Letterbox` parameters; augment_strength scales flips, transpositions and brightness/contrast jitter."""

    size: int = Field(Letterbox.size, ge=32, multiple_of=32)
    mean: float = Letterbox.mean
    std: float = Field(Letterbox.std, gt=0)


class FineStage(nn.Module):
    """Stride 4 → 2: the FPN's map, narrowed and upsampled, plus the backbone's first stage (16
    channels at stride 2), smoothed: for outlines of defects a few pixels wide."""

    def __init__(self, width: int = 64, out: int = 32, fine_channels: int = 16) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(width, out, 1)
        self.lateral = nn.Conv2d(fine_channels, out, 1)
        self.smooth = nn.Sequential(
            nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)
        )

    def forward(self, top: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.reduce(top), scale_factor=2.0, mode="nearest")
        return self.smooth(up + self.lateral(fine))


class PyramidNet(nn.Module):
    """EfficientNet-Lite0 stages → FPN (lateral 1 x 1, top-down sums, 3 x 3 smoothing) at stride 4
    (→ `fine`, if given, to stride 2) → the task's head."""

    def __init__(
        self, backbone: nn.Module, head: nn.Module, width: int = 64, fine: FineStage | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        for unused in ("conv_head", "bn2", "global_pool", "classifier"):
            if hasattr(backbone, unused):
                setattr(backbone, unused, nn.Identity())
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in PYRAMID_CHANNELS)
        self.smooth = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.fine = fine
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        net: Any = self.backbone
        x = net.bn1(net.conv_stem(images))
        features = []
        for i, stage in enumerate(net.blocks):
            x = stage(x)
            if i == 0:
                first = x
            if i in PYRAMID_STAGES:
                features.append(x)
        top = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            top = lateral(feature) + F.interpolate(top, scale_factor=2.0, mode="nearest")
        top = self.smooth(top)
        if self.fine is not None:
            top = self.fine(top, first)
        return self.head(top)


@dataclass
class Decoded:
    """A scene as the model sees it: letterboxed RGB, where the image lies, and its labels."""

    canvas: np.ndarray  # (size, size, 3) uint8
    placement: Placement
    scene: Scene
    mask: np.ndarray | None = None  # letterboxed class indices (segmentation), IGNORE_PIXEL outside


@dataclass(frozen=True)
class Geometry:
    """One of the eight flips and rotations of an image that keep a letterboxed canvas letterboxed:
    flips inside the content (top-left h x w), then, optionally, a transposition of the whole square
    canvas, which moves the content to the top-left w x h and leaves the padding bottom and right."""

    flip_x: bool = False
    flip_y: bool = False
    transpose: bool = False

    def apply(self, canvas: np.ndarray, content: tuple[int, int]) -> np.ndarray:
        """A (size, size[, channels]) canvas or mask, transformed (a copy)."""
        h, w = content
        out = canvas.copy()
        if self.flip_x:
            out[:h, :w] = out[:h, :w][:, ::-1]
        if self.flip_y:
            out[:h, :w] = out[:h, :w][::-1]
        if self.transpose:
            out = np.ascontiguousarray(out.swapaxes(0, 1))
        return out

    def boxes(self, boxes: np.ndarray, content: tuple[int, int]) -> np.ndarray:
        """(n, 4) boxes [x1, y1, x2, y2] in input pixels, transformed like the canvas."""
        h, w = content
        out = boxes.copy()
        if self.flip_x:
            out[:, [0, 2]] = w - out[:, [2, 0]]
        if self.flip_y:
            out[:, [1, 3]] = h - out[:, [3, 1]]
        if self.transpose:
            out = out[:, [1, 0, 3, 2]]
        return out


class DenseScenes(Dataset):
    def __init__(self, items: list[Decoded], transform) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.transform(self.items[i])


class DenseImageTask(Task[DensePreprocessing]):
    """Subclasses: `label_kind` ("masks" or "boxes"), `build_head`, `collate`, `loss`, `metrics`."""

    modality = "image"
    input_names: ClassVar[list[str]] = ["images"]
    channels_last = True
    preprocessing_model = DensePreprocessing
    label_kind: ClassVar[str]
    # the symbolic shape pass cannot follow the FPN's Resize (scale) nodes; ONNX shape inference can
    quantise_symbolic_shapes: ClassVar[bool] = False
    # convolutions only: ONNX Runtime's quantised Add broadcasts the FPN's upsampled maps wrongly
    quantise_op_types: ClassVar[list[str] | None] = ["Conv"]

    def __init__(self, recipe, backbone) -> None:
        super().__init__(recipe, backbone)
        self.letterbox = Letterbox(**self.options.model_dump(exclude={"augment_strength"}))
        self._decoded: dict[int, list[Decoded]] = {}
        self._rng = np.random.default_rng(recipe.train.seed)

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"images": {0: "batch"}, self.output_names[0]: {0: "batch"}}

    def load_data(self) -> Splits:
        d = self.recipe.data
        if not self.recipe.labels:
            raise ValueError(
                f"recipe {self.recipe.name!r}: {self.name} needs `labels` (mask values or COCO category names)"
            )
        labels = list(self.recipe.labels)
        train, val, test = load_scene_splits(
            d.source, self.label_kind, labels, d.val_fraction, d.test_fraction, d.seed, d.limit, self.progress
        )
        return Splits(train, val, test, labels)

    stride: ClassVar[int] = STRIDE  # of the model's output maps

    def build_model(self, label_names: list[str]) -> nn.Module:
        fine = FineStage() if self.stride == 2 else None
        return PyramidNet(self.backbone.load(), self.build_head(len(label_names)), fine=fine)

    def build_head(self, classes: int) -> nn.Module:
        raise NotImplementedError

    def decode(self, scene: Scene) -> Decoded:
        rgb = decode_image(scene.image.read_bytes(), max_decoded_pixels=MAX_IMAGE_PIXELS)
        canvas, placement = self.letterbox.resize(rgb)
        return Decoded(canvas, placement, scene)

    def decoded(self, split: list[Scene]) -> list[Decoded]:
        if id(split) not in self._decoded:
            self._decoded[id(split)] = [self.decode(s) for s in split]
        return self._decoded[id(split)]

    def augment(self, item: Decoded) -> tuple[np.ndarray, Geometry]:
        """A jittered copy of the canvas under a random `Geometry` (flips, transposition), and that
        geometry, for the task to apply to its labels."""
        strength = self.options.augment_strength
        h, w = item.placement.content
        canvas = item.canvas.copy()
        if strength > 0:
            gain = 1 + self._rng.uniform(-0.2, 0.2) * strength
            shift = self._rng.uniform(-20, 20) * strength
            canvas[:h, :w] = np.clip(canvas[:h, :w].astype(np.float32) * gain + shift, 0, 255).astype(
                np.uint8
            )
        geometry = Geometry(*(bool(self._rng.random() < 0.5 * strength) for _ in range(3)))
        return geometry.apply(canvas, item.placement.content), geometry

    def loader(self, split: list[Scene], shuffle: bool, batch_size: int | None = None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.recipe.train.seed)
        return DataLoader(
            DenseScenes(self.decoded(split), self.train_item if shuffle else self.eval_item),
            batch_size=batch_size or self.recipe.train.batch_size,
            shuffle=shuffle,
            collate_fn=self.collate,
            generator=generator,
        )

    def train_item(self, item: Decoded) -> Any:
        raise NotImplementedError

    def eval_item(self, item: Decoded) -> Any:
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Batch:
        raise NotImplementedError

    def targets_to(self, targets: Any, device: torch.device) -> Any:
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in targets.items()}

    def collect_targets(self, targets: list[Any]) -> list[Decoded]:
        """The decoded scenes, in order: metrics read their original labels and placements."""
        return [item for t in targets for item in t["items"]]

    def calibration_inputs(self, splits: Splits, count: int) -> list[dict[str, np.ndarray]]:
        items = self.decoded(splits.train)[:count]
        return [
            {"images": np.stack([self.letterbox.normalise(d.canvas) for d in items[i : i + 16]])}
            for i in range(0, len(items), 16)
        ]

    def preprocessing_config(self) -> dict[str, Any]:
        return {**self.letterbox.config(), "stride": self.stride}

    def figures(
        self, folder: Path, outputs: Any, targets: Any, splits: Splits, metrics: dict[str, Any]
    ) -> dict[str, Path]:
        """Predictions drawn on the first twelve test images (the task's `draw`), in a grid."""
        tiles = []
        for item, output in zip(targets[:12], outputs[:12]):
            rgb = decode_image(item.scene.image.read_bytes(), max_decoded_pixels=MAX_IMAGE_PIXELS)
            tile = self.draw(rgb[..., ::-1].copy(), item, output, splits.label_names)
            tiles.append(cv2.resize(tile, (256, 256), interpolation=cv2.INTER_AREA))
        if not tiles:
            return {}
        while len(tiles) % 4:
            tiles.append(np.zeros_like(tiles[0]))
        grid = np.vstack([np.hstack(tiles[i : i + 4]) for i in range(0, len(tiles), 4)])
        path = folder / "predictions.png"
        cv2.imwrite(str(path), grid)
        return {"predictions": path}

    def draw(self, bgr: np.ndarray, item: Decoded, output: np.ndarray, labels: list[str]) -> np.ndarray:
        raise NotImplementedError


COLOURS = [(0, 0, 0), (60, 60, 255), (60, 220, 60), (255, 120, 40), (0, 200, 255), (200, 0, 200)]


def colour(index: int) -> tuple[int, int, int]:
    return COLOURS[index % len(COLOURS)]
