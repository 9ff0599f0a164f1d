"""The shared half of dense image tasks (segmentation, detection): each upload is decoded (EXIF
orientation applied) and letterboxed in the prepare pool; a batch of images is one ONNX Runtime
call; answers are mapped back to the original image's pixels (serving/processing/letterbox.py).
The task modules say what the model's maps mean."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from serving.errors import RequestError
from serving.manifest import Manifest
from serving.settings import Settings
from serving.tasks.base import FileRequest, FileTask, Sample
from serving.tasks.image import ImageClassification

Prepared = tuple[np.ndarray, Any]  # (normalised CHW input, Placement)


class LetterboxedImageTask(FileTask[Prepared, Prepared, Any]):
    file_field = "images"
    content_types: ClassVar[dict[str, str]] = ImageClassification.content_types
    load_samples = ImageClassification.load_samples

    def __init__(self, model_dir: Path, manifest: Manifest, session: Any, settings: Settings) -> None:
        super().__init__(model_dir, manifest, session, settings)
        from serving.processing.image import decode_image
        from serving.processing.letterbox import Letterbox

        self.letterbox = Letterbox.from_config(manifest.preprocessing)
        # decoded whole (no reduced-scale JPEG decoding): answers are in the original image's pixels
        self.decode = functools.partial(
            decode_image, max_decoded_pixels=int(settings.max_image_megapixels * 1e6)
        )
        self.input_name = session.get_inputs()[0].name

    def prepare_file(self, data: bytes) -> Prepared:
        return self.letterbox(self.decode(data))

    def items(self, prepared: list[Prepared]) -> list[Prepared]:
        return prepared

    def infer(self, items: list[Prepared]) -> np.ndarray:
        """One ONNX Runtime call for the batch: the model's maps, one per item."""
        (maps,) = self.session.run(None, {self.input_name: np.stack([x for x, _ in items])})
        return maps

    @classmethod
    def samples(cls, count: int, model: str | None = None) -> list[Sample]:
        """Noisy surfaces of varied sizes with a dark line and a blob, PNG and JPEG in turn."""
        import cv2

        rng = np.random.default_rng(0)
        out = []
        for i in range(count):
            h, w = int(rng.integers(160, 320)), int(rng.integers(160, 320))
            base = rng.uniform(90, 200, 3)
            pixels = np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
            p0 = (int(rng.integers(10, w // 2)), int(rng.integers(10, h - 10)))
            p1 = (int(rng.integers(w // 2, w - 10)), int(rng.integers(10, h - 10)))
            cv2.line(pixels, p0, p1, (30, 30, 30), int(rng.integers(1, 4)))
            centre = (int(rng.integers(20, w - 20)), int(rng.integers(20, h - 20)))
            cv2.circle(pixels, centre, int(rng.integers(4, 15)), (40, 35, 30), -1)
            ext, kind = (".png", "image/png") if i % 2 == 0 else (".jpg", "image/jpeg")
            _ok, encoded = cv2.imencode(ext, pixels)
            out.append(
                Sample(
                    files=((f"surface{i}{ext}", encoded.tobytes(), kind),),
                    fields=(("model", model),) if model else (),
                )
            )
        return out

    @classmethod
    def cli_rows(cls, inputs: list[str], answer: dict[str, Any]) -> None:
        return None  # regions and polygons: the JSON answer is the readable form


def number_option(
    request: FileRequest, name: str, default: float, low: float, high: float, integer: bool = False
) -> float:
    """A numeric option of a multipart request within [low, high]; RequestError naming it otherwise."""
    raw = request.fields.get(name)
    if raw is None:
        return default
    kind = "an integer" if integer else "a number"
    pattern = r"-?[0-9]{1,9}" if integer else r"-?([0-9]{1,9}(\.[0-9]*)?|\.[0-9]+)([eE]-?[0-9]{1,3})?"
    if not re.fullmatch(pattern, raw.strip()):
        raise RequestError(f"{name}: expected {kind} between {low:g} and {high:g}, got {raw[:40]!r}")
    value = float(raw)
    if not low <= value <= high:
        raise RequestError(f"{name}: {raw.strip()} is out of range ({low:g}..{high:g})")
    return int(value) if integer else value


def flag_option(request: FileRequest, name: str) -> bool:
    raw = request.fields.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise RequestError(f"{name}: expected true or false, got {raw[:40]!r}")
    return value in ("true", "1")
