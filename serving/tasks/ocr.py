"""Reading text in images (`/image/ocr`): each upload is decoded in the prepare pool; the batcher's
thread reads each image of a batch in turn through the detector, the orientation classifier and the
recogniser (serving/processing/ocr.py), the recogniser's batches made of that image's own lines, so
an answer never depends on the other requests. Lines come back in reading order."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from serving.manifest import Manifest
from serving.settings import Settings
from serving.tasks.base import Answer, FileRequest, FileTask, Sample
from serving.tasks.image import IMAGE_TYPES


class TextLine(BaseModel):
    text: str
    score: float = Field(description="the recogniser's mean confidence over the line's characters")
    box: list[list[float]] = Field(
        description="the line's four corners [x, y] in the image's pixels: top-left, top-right, bottom-right, bottom-left"
    )


class OcrPrediction(BaseModel):
    lines: list[TextLine]
    file: str | None = Field(description="the upload's filename", json_schema_extra={"tensor": False})


class OcrAnswer(Answer):
    predictions: list[OcrPrediction]


SAMPLE_TEXTS = [
    "Invoice 2031 due on 14 March",
    "Total amount EUR 1,280.50",
    "Serial number KX-4471-B",
    "Keep away from direct sunlight",
    "Batch 88 passed inspection",
    "Deliver to Dock 3, Gate B",
]


class TextRecognition(FileTask[np.ndarray, np.ndarray, list[dict[str, Any]]]):
    name = "ocr"
    route = "/image/ocr"
    client_method = "read_text"
    summary = "Read the text in images: lines with their boxes, in reading order, one prediction per file"
    default_model = "ocr"
    response_model = OcrAnswer
    file_field = "images"
    content_types: ClassVar[dict[str, str]] = IMAGE_TYPES
    load_samples = 16

    def __init__(self, model_dir: Path, manifest: Manifest, session: Any, settings: Settings) -> None:
        super().__init__(model_dir, manifest, session, settings)
        import cv2

        from serving.processing.image import decode_image
        from serving.processing.ocr import OcrConfig, TextReader, dictionary
        from serving.sessions import create_session

        config = manifest.preprocessing
        # the detector is the served variant's session; the other two are assets of the folder, on the
        # same provider (not TensorRT: every new line width would build an engine)
        providers = [p for p in session.get_providers() if p != "TensorrtExecutionProvider"]

        def open_asset(key: str) -> Any:
            return create_session(
                model_dir / config[key],
                settings.intra_op_threads(),
                providers,
                settings.cache,
                settings.cuda_device,
                settings.cpu_mem_arena,
            )[0]

        def runner(model: Any) -> Any:
            name = model.get_inputs()[0].name
            return lambda batch: model.run(None, {name: batch})[0]

        recogniser, orientation = open_asset("recogniser"), open_asset("orientation")
        self.reader = TextReader(
            runner(session),
            runner(orientation),
            runner(recogniser),
            dictionary(recogniser.get_modelmeta().custom_metadata_map),
            OcrConfig.from_config(config),
        )
        self.decode = functools.partial(
            decode_image, max_decoded_pixels=int(settings.max_image_megapixels * 1e6)
        )
        self.to_bgr = functools.partial(cv2.cvtColor, code=cv2.COLOR_RGB2BGR)

    def prepare_file(self, data: bytes) -> np.ndarray:
        return self.to_bgr(self.decode(data))

    def items(self, prepared: list[np.ndarray]) -> list[np.ndarray]:
        return prepared

    def run(self, images: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        return [[line.__dict__ for line in self.reader.read(image)] for image in images]

    def answer(
        self, request: FileRequest, prepared: list[np.ndarray], outputs: list[list[dict[str, Any]]]
    ) -> dict[str, Any]:
        return {
            "predictions": [{"lines": lines, "file": u.filename} for lines, u in zip(outputs, request.files)]
        }

    @classmethod
    def samples(cls, count: int, model: str | None = None) -> list[Sample]:
        """A line or two of dark text on light paper, PNG and JPEG in turn."""
        import cv2

        out = []
        for i in range(count):
            text = SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]
            lines = [text] if i % 3 else [text, SAMPLE_TEXTS[(i + 1) % len(SAMPLE_TEXTS)]]
            page = np.full((60 + 50 * len(lines), 640, 3), 245 - i % 7, np.uint8)
            for j, line in enumerate(lines):
                cv2.putText(
                    page,
                    line,
                    (20, 60 + 50 * j),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.9 + 0.01 * (i // 6),
                    (20, 20, 20),
                    2,
                    cv2.LINE_AA,
                )
            ext, kind = (".png", "image/png") if i % 2 == 0 else (".jpg", "image/jpeg")
            _ok, encoded = cv2.imencode(ext, page)
            out.append(
                Sample(
                    files=((f"text{i}{ext}", encoded.tobytes(), kind),),
                    fields=(("model", model),) if model else (),
                )
            )
        return out

    @staticmethod
    def cli_line(given: str, prediction: Any) -> str:
        return f"{given}:\n" + "\n".join(
            f"  {line['score']:.3f}  {line['text']}" for line in prediction["lines"]
        )
