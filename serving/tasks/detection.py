"""Object detection (`/image/detect`): boxes around every object (surface defects) of each uploaded
image, in its own pixels (EXIF orientation applied first).

The model answers CenterNet-style maps over the letterboxed input (stride 4): each class's centre
heat and each cell's distances to the box edges; peaks above `score_threshold` become boxes, mapped
back to the original image, overlapping boxes of a class suppressed (serving/processing/regions.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from serving.tasks.base import Answer, FileRequest, Option
from serving.tasks.letterboxed import LetterboxedImageTask, Prepared, number_option

MAX_DETECTIONS = 300


class Detection(BaseModel):
    label: str
    score: float
    box: list[float] = Field(description="[x1, y1, x2, y2] in the original image's pixels")


class DetectPrediction(BaseModel):
    detections: list[Detection] = Field(description="best first")
    file: str | None = Field(
        description="the upload's filename", json_schema_extra={"tensor": False}
    )  # v2 sends no filenames


class DetectAnswer(Answer):
    predictions: list[DetectPrediction]


class ObjectDetection(LetterboxedImageTask):
    name = "object-detection"
    route = "/image/detect"
    client_method = "detect_objects"
    summary = "Detect objects (surface defects): labelled boxes per image, in order"
    default_model = "defect-detection"
    response_model = DetectAnswer
    options: ClassVar[dict[str, Option]] = {
        "score_threshold": Option(
            float,
            "smallest score of a detection (default 0.3)",
            {"type": "number", "minimum": 0, "maximum": 1},
        ),
        "max_detections": Option(
            int,
            f"most detections per image, best first (default 100, at most {MAX_DETECTIONS})",
            {"type": "integer", "minimum": 1, "maximum": MAX_DETECTIONS},
        ),
    }

    def check(self, request: FileRequest) -> None:
        self.limits(request)

    @staticmethod
    def limits(request: FileRequest) -> tuple[float, int]:
        threshold = number_option(request, "score_threshold", 0.3, 0.0, 1.0)
        most = int(number_option(request, "max_detections", 100, 1, MAX_DETECTIONS, integer=True))
        return threshold, most

    def run(self, items: list[Prepared]) -> list[np.ndarray]:
        return list(self.infer(items))

    def answer(self, request: FileRequest, prepared: list[Prepared], outputs: list[Any]) -> dict[str, Any]:
        from serving.processing.regions import detect

        threshold, most = self.limits(request)
        size, labels = self.letterbox.size, self.manifest.labels
        return {
            "predictions": [
                {
                    "detections": detect(
                        maps, placement, size, threshold, most, candidates=max(100, most)
                    ).answer(labels),
                    "file": upload.filename,
                }
                for maps, (_, placement), upload in zip(outputs, prepared, request.files)
            ]
        }
