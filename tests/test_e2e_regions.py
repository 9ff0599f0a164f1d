"""Segmentation and detection: the tiny models built in the session (tests/conftest.py), and
POST /v1/image/segment and /v1/image/detect against the real server with real files and bad input."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from serving.manifest import load_manifest
from serving.runtime import Runtime
from serving.settings import Settings
from serving.tasks import FileRequest, Upload

SEGMENT, DETECT = "/v1/image/segment", "/v1/image/detect"


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory) -> list[tuple[str, bytes, tuple[int, int]]]:
    """Generated scenes as PNG and JPEG uploads: (filename, bytes, (height, width))."""
    from training.data.defect_scenes import make_scene

    files = []
    for i in range(4):
        bgr, _, _ = make_scene(np.random.default_rng([99, i]))
        ext = ".png" if i % 2 == 0 else ".jpg"
        ok, data = cv2.imencode(ext, bgr)
        assert ok
        files.append((f"scene{i}{ext}", data.tobytes(), bgr.shape[:2]))
    return files


def test_builds_record_metrics_parity_and_variants(tiny_repository):
    for name, metric, keys in (
        ("defect-segmentation", "miou", {"iou_scratch", "iou_spot", "iou_crack", "miou"}),
        ("defect-detection", "map50", {"map50", "map50_95"}),
    ):
        m = load_manifest(tiny_repository / name)
        assert m.metrics["decisive"] == metric and keys <= set(m.variants["fp32"].metrics)
        assert {"fp32", "int8"} <= set(m.variants) and m.preprocessing["size"] == 64
        assert m.variants["fp32"].parity["max_abs_diff"] <= m.recipe["export"]["parity_atol"]
        assert "speedup_vs_fp32" in m.variants["int8"].parity  # the INT8 gate's numbers, shown by the summary
    seg = load_manifest(tiny_repository / "defect-segmentation")
    assert seg.labels[0] == "background" and seg.variants["fp32"].parity["pixel_agreement"] >= 0.999
    assert seg.signature.outputs[0].shape[1] == len(seg.labels)
    det = load_manifest(tiny_repository / "defect-detection")
    assert det.signature.outputs[0].shape[1] == len(det.labels) + 4


def test_segment_answers_each_image_in_its_own_pixels(server, scene_files):
    files = [("images", (name, data, "application/octet-stream")) for name, data, _ in scene_files]
    r = httpx.post(server + SEGMENT, files=files, data={"return_mask": "true"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "defect-segmentation"
    labels = ["background", "scratch", "spot", "crack"]
    assert [p["file"] for p in body["predictions"]] == [name for name, _, _ in scene_files]
    for p, (_, _, (h, w)) in zip(body["predictions"], scene_files):
        assert list(p["classes"]) == labels and sum(p["classes"].values()) == pytest.approx(1, abs=1e-6)
        mask = cv2.imdecode(np.frombuffer(base64.b64decode(p["mask_png"]), np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w) and mask.max() < len(labels)
        for c, label in enumerate(labels):
            assert (mask == c).mean() == pytest.approx(p["classes"][label], abs=1e-6)
        for inst in p["instances"]:
            x1, y1, x2, y2 = inst["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and inst["label"] != "background"
            assert 0 <= inst["score"] <= 1 and len(inst["polygon"]) >= 1
    without = httpx.post(server + SEGMENT, files=files[:1], timeout=60).json()["predictions"][0]
    assert without["mask_png"] is None
    assert without["classes"] == body["predictions"][0]["classes"]


def exif_rotated_jpeg(bgr: np.ndarray) -> bytes:
    """The pixels as stored, with EXIF orientation 6: viewers (and the server) turn them 90° clockwise."""
    image = Image.fromarray(bgr[..., ::-1])
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def test_detect_answers_boxes_in_original_pixels_after_exif_orientation(server, scene_files):
    from training.data.defect_scenes import make_scene

    bgr, _, _ = make_scene(np.random.default_rng([99, 7]))
    h, w = bgr.shape[:2]
    assert h != w
    files = [
        ("images", ("stored.png", cv2.imencode(".png", bgr)[1].tobytes(), "image/png")),
        ("images", ("rotated.jpg", exif_rotated_jpeg(bgr), "image/jpeg")),
    ]
    r = httpx.post(
        server + DETECT, files=files, data={"score_threshold": "0", "max_detections": "7"}, timeout=60
    )
    assert r.status_code == 200, r.text
    stored, rotated = r.json()["predictions"]
    for prediction, (height, width) in ((stored, (h, w)), (rotated, (w, h))):  # turned: sides swapped
        assert 1 <= len(prediction["detections"]) <= 7
        scores = [d["score"] for d in prediction["detections"]]
        assert scores == sorted(scores, reverse=True)
        for d in prediction["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert d["label"] in ("scratch", "spot", "crack")
    strict = httpx.post(server + DETECT, files=files[:1], data={"score_threshold": "1"}, timeout=60)
    assert strict.json()["predictions"][0]["detections"] == []


BAD = [
    (SEGMENT, {"images": ("notes.txt", b"hello")}, {}, 400, "images[0] ('notes.txt'): not an image"),
    (SEGMENT, {"images": ("empty.png", b"")}, {}, 400, "'empty.png'): zero bytes"),
    (
        SEGMENT,
        {"images": ("a.png", "PNG")},
        {"return_mask": "maybe"},
        400,
        "return_mask: expected true or false",
    ),
    (
        SEGMENT,
        {"images": ("a.png", "PNG")},
        {"model": "defect-detection"},
        400,
        "send it to /v1/image/detect",
    ),
    (DETECT, {"images": ("cut.jpg", "CUT")}, {}, 400, "'cut.jpg'): truncated JPEG"),
    (
        DETECT,
        {"images": ("a.png", "PNG")},
        {"score_threshold": "1.5"},
        400,
        "score_threshold: 1.5 is out of range",
    ),
    (
        DETECT,
        {"images": ("a.png", "PNG")},
        {"score_threshold": "nan"},
        400,
        "score_threshold: expected a number",
    ),
    (DETECT, {"images": ("a.png", "PNG")}, {"max_detections": "0"}, 400, "max_detections: 0 is out of range"),
    (
        DETECT,
        {"images": ("a.png", "PNG")},
        {"max_detections": "2.5"},
        400,
        "max_detections: expected an integer",
    ),
    (
        DETECT,
        {"images": ("a.png", "PNG")},
        {"model": "surface-defects"},
        400,
        "send it to /v1/image/classify",
    ),
    (DETECT, {"images": ("a.png", "PNG")}, {"model": "nope"}, 404, "unknown model 'nope'"),
    (
        DETECT,
        {},
        {"model": "defect-detection"},
        415,
        "send multipart/form-data with one or more `images` files",
    ),
]


@pytest.mark.parametrize("route,files,fields,status,needle", BAD)
def test_bad_input_gets_a_4xx_naming_what_is_wrong(server, scene_files, route, files, fields, status, needle):
    png, jpeg = scene_files[0][1], scene_files[1][1]
    sent = {
        k: (name, {"PNG": png, "CUT": jpeg[: len(jpeg) // 2]}.get(data, data))
        for k, (name, data) in files.items()
    }
    r = httpx.post(server + route, data=fields, files=sent or None, timeout=60)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"], r.json()
    assert httpx.post(server + route, files={"images": ("ok.png", png)}, timeout=60).status_code == 200


def test_concurrent_requests_get_the_answers_they_get_alone(server, tiny_repository, scene_files):
    """Batches merge uploads of different requests and sizes; each answer is the one it gets alone."""
    runtime = Runtime(Settings(repository=tiny_repository, device="cpu", threads=1))
    alone = {}
    for route, name in ((SEGMENT, "defect-segmentation"), (DETECT, "defect-detection")):
        task = runtime.models[name].task
        for filename, data, _ in scene_files:
            answer = task.predict(FileRequest(None, [Upload(0, filename, data)]))
            alone[route, filename] = json.loads(json.dumps(answer["predictions"][0]))

    async def fire():
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            calls = [
                (route, scene_files[i % len(scene_files)]) for i in range(16) for route in (SEGMENT, DETECT)
            ]
            responses = await asyncio.gather(
                *(client.post(route, files={"images": (f[0], f[1])}) for route, f in calls)
            )
            return calls, responses

    calls, responses = asyncio.run(fire())
    for (route, (filename, _, _)), r in zip(calls, responses):
        assert r.status_code == 200, r.text
        got = r.json()["predictions"][0]
        expected = alone[route, filename]
        if route == SEGMENT:
            assert got["classes"] == pytest.approx(expected["classes"], abs=1e-4)
            assert [i["label"] for i in got["instances"]] == [i["label"] for i in expected["instances"]]
        else:
            assert [d["label"] for d in got["detections"]] == [d["label"] for d in expected["detections"]]
            boxes = [v for d in got["detections"] for v in d["box"]]
            assert boxes == pytest.approx([v for d in expected["detections"] for v in d["box"]], abs=0.2)


def test_cli_predict_writes_the_json_answer(tiny_repository, scene_files, tmp_path, capsys):
    from serving.cli import main

    path = tmp_path / scene_files[0][0]
    path.write_bytes(scene_files[0][1])
    args = ["predict", "defect-detection", str(path), "--score-threshold", "0.01", "--max-detections", "3"]
    assert main([*args, "--repository", str(tiny_repository)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"] == "defect-detection" and len(printed["predictions"][0]["detections"]) <= 3


@pytest.mark.parametrize("flag,returned", [("true", True), ("false", False)])
def test_cli_return_mask_flag_is_a_boolean(tiny_repository, scene_files, tmp_path, capsys, flag, returned):
    from serving.cli import main

    path = tmp_path / scene_files[1][0]
    path.write_bytes(scene_files[1][1])
    args = ["predict", "defect-segmentation", str(path), "--return-mask", flag, "--json"]
    assert main([*args, "--repository", str(tiny_repository)]) == 0
    prediction = json.loads(capsys.readouterr().out)["predictions"][0]
    assert (prediction["mask_png"] is not None) == returned
