"""OCR: the pipeline's steps on made-up inputs (fast), then the PP-OCR models read out of the
`rapidocr-onnxruntime` wheel reading English lines rendered here (several fonts, slight rotation,
blur, JPEG), with the character error rate measured, and the route served by a real server."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from serving.processing.ocr import (
    OcrConfig,
    TextReader,
    ctc_decode,
    dictionary,
    reading_order,
    straighten,
    text_boxes,
)
from serving.runtime import Runtime
from serving.settings import Settings
from serving.tasks import FileRequest, Upload
from tests.conftest import start_server
from training.data.text_images import LINES, character_errors, degrade, fonts, page, render


def box(x: float, y: float, w: float, h: float, slope: float = 0.0) -> np.ndarray:
    return np.array([[x, y], [x + w, y + slope * w], [x + w, y + h + slope * w], [x, y + h]], np.float32)


# --- the steps -------------------------------------------------------------------------------------


@pytest.mark.fast
def test_ctc_decoding_merges_repeats_and_drops_blanks() -> None:
    characters = ["a", "b", " "]  # classes 1, 2, 3; 0 is the blank
    steps = [1, 1, 0, 1, 2, 2, 0, 0, 3, 2]
    probs = np.full((len(steps), 4), 0.1, np.float32)
    probs[np.arange(len(steps)), steps] = 0.7
    assert ctc_decode(probs, characters) == ("aab b", pytest.approx(0.7))
    assert ctc_decode(np.eye(4, dtype=np.float32)[[0, 0]], characters) == ("", 0.0)
    assert dictionary({"character": "x\ny"}) == ["x", "y", " "]
    with pytest.raises(ValueError, match="character"):
        dictionary({})


@pytest.mark.fast
@pytest.mark.parametrize("shape", [(1, 1), (1, 2000), (2000, 1), (3, 700), (900, 7), (40, 640), (2000, 2000)])
def test_the_detector_input_is_bounded_whatever_the_image_shape(shape: tuple[int, int]) -> None:
    """A sliver (1 pixel wide, or tall) is scaled up by the shorter-side rule, but the detector never
    sees a side longer than `det_max_side`, nor a shorter side below `det_min_side` unless the longer
    side is already at the bound; the map's boxes come back inside the image."""
    config = OcrConfig()
    seen: list[tuple[int, ...]] = []

    def detector(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        probability = np.zeros((1, 1, *batch.shape[2:]), np.float32)
        probability[0, 0, 8:24, 8:-8] = 0.9  # one band of text along the top
        return probability

    no_text = np.zeros((1, 40, 5), np.float32)  # every step blank: nothing is read
    reader = TextReader(
        detector,
        lambda b: np.tile([[0.9, 0.1]], (len(b), 1)),
        lambda b: no_text.repeat(len(b), 0),
        ["a"],
        config,
    )
    image = np.full((*shape, 3), 255, np.uint8)
    assert reader.read(image) == []
    ((_, channels, h, w),) = seen
    assert channels == 3 and h % 32 == 0 and w % 32 == 0
    assert max(h, w) <= config.det_max_side
    assert min(h, w) >= config.det_min_side or max(h, w) > config.det_max_side - 32


@pytest.mark.fast
def test_db_boxes_grow_each_region_by_its_unclip_distance() -> None:
    probability = np.zeros((120, 300), np.float32)
    probability[40:60, 50:250] = 0.9  # a 200 x 20 text core
    probability[100:102, 10:12] = 0.9  # too small to be text
    probability[5:15, 280:295] = 0.35  # above the pixel threshold, below the box threshold
    config = OcrConfig()
    ((corners, score),) = text_boxes(probability, config)
    assert 0.8 < score <= 0.9  # the mean inside the (dilated) region
    width, height = np.linalg.norm(corners[1] - corners[0]), np.linalg.norm(corners[3] - corners[0])
    core_w, core_h = 200, 20  # dilated by a pixel to 201 x 21 pixels, 200 x 20 between their centres
    grown = core_w * core_h * config.unclip_ratio / (2 * (core_w + core_h))
    assert width == pytest.approx(core_w + 2 * grown, abs=1.5) and height == pytest.approx(
        core_h + 2 * grown, abs=1.5
    )


@pytest.mark.fast
def test_reading_order_groups_words_into_lines_even_when_rotated() -> None:
    slope = 0.05  # about 3 degrees: the line's right end is lower than the next line's left end would be
    line1 = [
        box(10, 10, 80, 20, slope),
        box(100, 10 + 90 * slope, 80, 20, slope),
        box(190, 10 + 180 * slope, 80, 20, slope),
    ]
    line2 = [box(10, 40, 120, 20, slope), box(140, 40 + 130 * slope, 60, 20, slope)]
    column = [box(600, 30, 80, 20)]  # far to the right of the lines: another column
    speck = box(150, 18, 4, 4)  # a dot the detector found inside line 1: it must not break the line
    boxes = [line2[1], column[0], line1[2], line1[0], speck, line2[0], line1[1]]
    groups = reading_order(boxes)
    assert [[boxes[i].tolist() for i in g] for g in groups] == [
        [b.tolist() for b in (line1[0], line1[1], speck, line1[2])],
        [b.tolist() for b in column],
        [b.tolist() for b in line2],
    ]


@pytest.mark.fast
def test_straighten_deskews_a_rotated_box() -> None:
    page = np.full((200, 300, 3), 255, np.uint8)
    rect = ((150.0, 100.0), (160.0, 30.0), 8.0)
    corners = cv2.boxPoints(rect)
    cv2.fillPoly(page, [corners.astype(np.int32)], (0, 0, 0))
    from serving.processing.ocr import ordered_corners

    crop = straighten(page, ordered_corners(rect))
    assert abs(crop.shape[1] - 160) <= 2 and abs(crop.shape[0] - 30) <= 2
    assert crop[3:-3, 3:-3].mean() < 30  # all ink: the rectangle lies straight in its crop
    assert (
        straighten(page, ordered_corners(((150.0, 100.0), (20.0, 90.0), 0.0))).shape[1] >= 80
    )  # tall → turned


# --- the shipped models ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ocr_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.importer import import_rapidocr

    repo = tmp_path_factory.mktemp("ocr")
    import_rapidocr("ocr", repo)  # the wheel is downloaded once into the data cache
    return repo


@pytest.fixture(scope="module")
def reader(ocr_repository: Path):
    runtime = Runtime(Settings(repository=ocr_repository, device="cpu", threads=2))
    assert not runtime.broken, runtime.broken
    return runtime.models["ocr"].task


def read(reader, images: list[bytes]) -> list[dict]:
    request = FileRequest(None, [Upload(i, f"page{i}.png", data) for i, data in enumerate(images)])
    return reader.predict(request)["predictions"]


def test_character_error_rate_on_rendered_lines(reader) -> None:
    """≤ 3% of characters wrong (spaces ignored) over every line in every font, each degraded."""
    rng = np.random.default_rng(5)
    images, truths = [], []
    for i, text in enumerate(LINES):
        size = 20 if i % 2 else 28  # pixels: the ink of a line is about as high (19 and 27 in DejaVu Sans)
        for font in fonts(size):
            images.append(degrade(render(text, font, size), rng))
            truths.append(text)
    faces = fonts()
    predictions = read(reader, images)
    errors = characters = 0
    wrong = []
    for truth, prediction in zip(truths, predictions):
        got = " ".join(line["text"] for line in prediction["lines"])
        missed, count = character_errors(got, truth)
        errors, characters = errors + missed, characters + count
        if missed:
            wrong.append((got, truth))
    rate = errors / characters
    print(
        f"\nOCR character error rate {rate:.2%} over {len(images)} lines in {len(faces)} fonts; misread: {wrong}"
    )
    assert rate <= 0.03, wrong


def test_a_page_is_read_in_reading_order_upside_down_lines_too(reader) -> None:
    font = fonts(24)[0]
    sheet = page(LINES[:5], font, 24, 75, (900, 420))
    flipped = cv2.rotate(render(LINES[6], font, 24), cv2.ROTATE_180)
    (page_answer, flipped_answer) = read(
        reader, [cv2.imencode(".png", g)[1].tobytes() for g in (sheet, flipped)]
    )
    assert [line["text"].replace(" ", "") for line in page_answer["lines"]] == [
        t.replace(" ", "") for t in LINES[:5]
    ]
    tops = [line["box"][0][1] for line in page_answer["lines"]]
    assert tops == sorted(tops) and all(
        0 <= x <= 900 and 0 <= y <= 420 for line in page_answer["lines"] for x, y in line["box"]
    )
    assert [line["text"].replace(" ", "") for line in flipped_answer["lines"]] == [LINES[6].replace(" ", "")]
    assert page_answer["file"] == "page0.png"


def test_ocr_route_on_a_real_server(ocr_repository: Path, tmp_path: Path) -> None:
    """POST /v1/image/ocr with two images; v2 answers the same; a broken file is a 400 naming it."""
    import base64

    images = [cv2.imencode(".png", render(text, cv2.FONT_HERSHEY_SIMPLEX))[1].tobytes() for text in LINES[:2]]
    with start_server(ocr_repository, tmp_path) as server:
        files = [("images", (f"line{i}.png", data, "image/png")) for i, data in enumerate(images)]
        r = httpx.post(server.url + "/v1/image/ocr", files=files, timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "ocr" and [p["file"] for p in body["predictions"]] == [
            "line0.png",
            "line1.png",
        ]
        assert [p["lines"][0]["text"].replace(" ", "") for p in body["predictions"]] == [
            t.replace(" ", "") for t in LINES[:2]
        ]
        assert all(len(p["lines"][0]["box"]) == 4 for p in body["predictions"])
        v2 = httpx.post(
            server.url + "/v2/models/ocr/infer",
            json={
                "inputs": [
                    {
                        "name": "images",
                        "shape": [2],
                        "datatype": "BYTES",
                        "data": [base64.b64encode(d).decode() for d in images],
                    }
                ]
            },
            timeout=120,
        )
        assert v2.status_code == 200, v2.text
        (lines,) = [o for o in v2.json()["outputs"] if o["name"] == "lines"]
        assert [json.loads(v) for v in lines["data"]] == [p["lines"] for p in body["predictions"]]
        bad = httpx.post(
            server.url + "/v1/image/ocr",
            files=[("images", ("scan.png", b"\x89PNG broken", "image/png"))],
            timeout=60,
        )
        assert bad.status_code == 400 and "scan.png" in bad.json()["error"], bad.text
