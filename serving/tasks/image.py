"""Image classification (`/image/classify`): each upload is decoded and pre-processed in the prepare
pool, beside the inference thread; a batch of images is one ONNX Runtime call; answers rank the
top k classes of each image."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from serving.errors import RequestError
from serving.manifest import Manifest
from serving.processing.postprocess import softmax, top_k
from serving.settings import Settings
from serving.tasks.base import Answer, FileRequest, FileTask, Option, Sample


class Ranked(BaseModel):
    label: str
    score: float


class ImagePrediction(BaseModel):
    label: str
    score: float
    top_k: list[Ranked]
    file: str | None = Field(
        description="the upload's filename", json_schema_extra={"tensor": False}
    )  # v2 sends no filenames


class ImageClassifyAnswer(Answer):
    predictions: list[ImagePrediction]


# File suffix → content type of the image uploads every image task takes (for --payload-file).
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


class ImageClassification(FileTask[np.ndarray, np.ndarray, np.ndarray]):
    name = "image-classification"
    route = "/image/classify"
    client_method = "classify_images"
    summary = "Classify images (photos, surface defects); one prediction per file, in order"
    default_model = "imagenet"
    response_model = ImageClassifyAnswer
    file_field = "images"
    options: ClassVar[dict[str, Option]] = {
        "top_k": Option(int, "classes to rank per image (default 5)", {"type": "integer", "minimum": 1})
    }
    content_types: ClassVar[dict[str, str]] = IMAGE_TYPES
    load_samples = 16

    def __init__(self, model_dir: Path, manifest: Manifest, session: Any, settings: Settings) -> None:
        super().__init__(model_dir, manifest, session, settings)
        from serving.processing.image import ImagePreprocessor, decode_image

        self.preprocessor = ImagePreprocessor.from_config(manifest.preprocessing)
        self.decode = functools.partial(
            decode_image,
            max_decoded_pixels=int(settings.max_image_megapixels * 1e6),
            min_side=self.preprocessor.resize_shorter,
        )
        self.input_name = session.get_inputs()[0].name
        # an imported graph that ends in a softmax already (`tuneserve import --preprocessing outputs=...`)
        self.probabilities = manifest.preprocessing.get("outputs") == "probabilities"

    def check(self, request: FileRequest) -> None:
        self.top_k(request)

    def top_k(self, request: FileRequest) -> int:
        classes = len(self.manifest.labels)
        raw = request.fields.get("top_k")
        if raw is None:
            return min(5, classes)
        if not re.fullmatch(r"-?[0-9]{1,9}", raw.strip()):
            raise RequestError(f"top_k: expected an integer between 1 and {classes}")
        value = int(raw)
        if not 1 <= value <= classes:
            raise RequestError(
                f"top_k: {value} is out of range; the model has {classes} classes (1..{classes})"
            )
        return value

    def prepare_file(self, data: bytes) -> np.ndarray:
        return self.preprocessor(self.decode(data))

    def items(self, prepared: list[np.ndarray]) -> list[np.ndarray]:
        return prepared

    def run(self, images: list[np.ndarray]) -> list[np.ndarray]:
        logits = self.session.run(None, {self.input_name: np.stack(images)})[0]
        return list(logits if self.probabilities else softmax(logits))

    def answer(
        self, request: FileRequest, prepared: list[np.ndarray], outputs: list[np.ndarray]
    ) -> dict[str, Any]:
        ranked = top_k(np.stack(outputs), self.manifest.labels, self.top_k(request))
        return {"predictions": [{**r, "file": u.filename} for r, u in zip(ranked, request.files)]}

    @classmethod
    def samples(cls, count: int, model: str | None = None) -> list[Sample]:
        """Gradients with noise, PNG and JPEG in turn."""
        import cv2

        rng = np.random.default_rng(0)
        size, out = 224, []
        for i in range(count):
            yy, xx = np.mgrid[0:size, 0:size] / size
            base = np.stack(
                [xx * rng.uniform(50, 255), yy * rng.uniform(50, 255), (xx + yy) * rng.uniform(20, 127)], -1
            )
            pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            ext, kind = (".png", "image/png") if i % 2 == 0 else (".jpg", "image/jpeg")
            _ok, encoded = cv2.imencode(ext, pixels[..., ::-1])
            out.append(
                Sample(
                    files=((f"sample{i}{ext}", encoded.tobytes(), kind),),
                    fields=(("model", model),) if model else (),
                )
            )
        return out
