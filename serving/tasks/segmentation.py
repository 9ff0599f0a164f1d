"""Image segmentation (`/image/segment`): per-pixel classes of each uploaded image, in its own pixels.

The model answers class logits over the letterboxed input (at its stride); the answer, in the server's
prepare pool rather than the inference thread, maps them onto the original image and takes each
pixel's class (serving/processing/regions.py). It gives each label's share of the image, one instance per connected region of a defect class (label,
score, box, polygon), and on request the mask itself as a PNG of class indices.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field

from serving.tasks.base import Answer, FileRequest, Option
from serving.tasks.letterboxed import LetterboxedImageTask, Prepared, flag_option


class SegmentInstance(BaseModel):
    label: str
    score: float = Field(description="mean probability of the label over the region")
    box: list[float] = Field(description="[x1, y1, x2, y2] in the original image's pixels")
    polygon: list[list[float]] = Field(description="the region's outline, [[x, y], ...] in original pixels")


class SegmentPrediction(BaseModel):
    classes: dict[str, float] = Field(
        description="share of the image's pixels per label (background included)"
    )
    instances: list[SegmentInstance]
    mask_png: str | None = Field(
        None,
        description='with "return_mask": base64 PNG of the original size, pixel = class index (0 = background)',
    )
    file: str | None = Field(
        description="the upload's filename", json_schema_extra={"tensor": False}
    )  # v2 sends no filenames


class SegmentAnswer(Answer):
    predictions: list[SegmentPrediction]


class ImageSegmentation(LetterboxedImageTask):
    name = "image-segmentation"
    route = "/image/segment"
    client_method = "segment_images"
    summary = "Segment images (surface defects): classes per pixel, regions with boxes and outlines, in order"
    default_model = "defect-segmentation"
    response_model = SegmentAnswer
    options: ClassVar[dict[str, Option]] = {
        "return_mask": Option(
            bool,
            "also return each image's class-index mask as a base64 PNG (default false)",
            {"type": "boolean"},
        )
    }

    def check(self, request: FileRequest) -> None:
        flag_option(request, "return_mask")

    answer_in_pool = True  # masks at the original size, regions, contours and PNGs cost more than inference

    def run(self, items: list[Prepared]) -> list[Any]:
        return list(self.infer(items))

    def answer(self, request: FileRequest, prepared: list[Prepared], outputs: list[Any]) -> dict[str, Any]:
        from serving.processing.regions import mask_png, segment

        labels = self.manifest.labels
        return_mask = flag_option(request, "return_mask")
        predictions = []
        for maps, (_, placement), upload in zip(outputs, prepared, request.files):
            seg = segment(maps, placement, self.letterbox.size)
            predictions.append(
                {
                    "classes": seg.areas(labels),
                    "instances": seg.instances(labels),
                    "mask_png": mask_png(seg.full_mask()) if return_mask else None,
                    "file": upload.filename,
                }
            )
        return {"predictions": predictions}
