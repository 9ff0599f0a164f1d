"""POST /v1/image/classify against the real server: every format, every bad input, concurrency."""

from __future__ import annotations

import asyncio

import cv2
import httpx
import numpy as np
import pytest
import skimage.data

from serving.runtime import Runtime
from serving.settings import Settings
from serving.tasks import FileRequest, Upload

from .test_image import _png_header_only, encode

ROUTE = "/v1/image/classify"
MODEL = "surface-defects"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage.data.astronaut()


def test_every_format_in_one_request_in_order(server, photo):
    files = [
        ("images", (f"astronaut{ext}", encode(photo, ext), "application/octet-stream"))
        for ext in (".jpg", ".png", ".bmp", ".webp", ".tiff")
    ]
    r = httpx.post(server + ROUTE, data={"model": MODEL, "top_k": "2"}, files=files, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL
    assert [p["file"] for p in body["predictions"]] == [
        f"astronaut{ext}" for ext in (".jpg", ".png", ".bmp", ".webp", ".tiff")
    ]
    for p in body["predictions"]:
        assert len(p["top_k"]) == 2 and p["label"] == p["top_k"][0]["label"]


def test_default_top_k_is_capped_by_classes(server, photo):
    r = httpx.post(server + ROUTE, data={"model": MODEL}, files={"images": ("a.png", encode(photo, ".png"))})
    assert r.status_code == 200 and len(r.json()["predictions"][0]["top_k"]) == 4


BAD = [
    ({"images": ("empty.png", b"")}, {}, 400, "'empty.png'): zero bytes"),
    ({"images": ("notes.txt", b"hello, world")}, {}, 400, "'notes.txt'): not an image"),
    ({"images": ("cut.jpg", None)}, {}, 400, "'cut.jpg'): truncated JPEG"),
    ({"images": ("bomb.png", _png_header_only(20_000, 20_000))}, {}, 400, "'bomb.png'): 20000x20000"),
    ({"images": ("big.png", b"\x89PNG" + b"\0" * (21 * 1024 * 1024))}, {}, 413, "'big.png'): 21.0 MiB"),
    ({"images": ("a.png", "PNG")}, {"top_k": "0"}, 400, "top_k: 0 is out of range"),
    ({"images": ("a.png", "PNG")}, {"top_k": "5"}, 400, "top_k: 5 is out of range"),
    ({"images": ("a.png", "PNG")}, {"top_k": "two"}, 400, "top_k: expected an integer"),
    ({"images": ("a.png", "PNG")}, {"model": "nope"}, 404, "unknown model 'nope'"),
    ({"images": ("a.png", "PNG")}, {"model": "intent"}, 400, "send it to /v1/text/classify"),
    ({}, {"images": "https://example.com/cat.jpg"}, 400, "URLs are not fetched"),
    ({}, {"model": MODEL}, 400, "images: no files"),
]


@pytest.mark.parametrize("files,fields,status,needle", BAD)
def test_bad_uploads_get_a_4xx_naming_the_file(server, photo, files, fields, status, needle):
    files = {
        k: (
            name,
            encode(photo, ".jpg")[:5000]
            if data is None
            else encode(photo, ".png")
            if data == "PNG"
            else data,
        )
        for k, (name, data) in files.items()
    }
    data = {"model": MODEL, **fields}
    if files:
        r = httpx.post(server + ROUTE, data=data, files=files, timeout=60)
    else:  # text fields only, still multipart
        r = httpx.post(server + ROUTE, files={k: (None, v) for k, v in data.items()}, timeout=60)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_json_body_is_refused(server):
    r = httpx.post(server + ROUTE, json={"images": ["a.jpg"]})
    assert r.status_code == 415 and "multipart" in r.json()["error"]


def test_concurrent_uploads_get_their_own_answers(server, tiny_repository):
    rng = np.random.default_rng(0)
    base = cv2.resize(skimage.data.coffee(), (96, 64))
    images = [
        np.clip(base.astype(int) + rng.integers(-60, 60, (1, 1, 3)), 0, 255).astype(np.uint8)
        for _ in range(30)
    ]
    blobs = [encode(img, ".png") for img in images]
    offline = Runtime(Settings(repository=tiny_repository, device="cpu", threads=1)).models[MODEL].task
    expected = [
        offline.predict(FileRequest(MODEL, [Upload(0, None, b)], {"top_k": "4"}))["predictions"][0]
        for b in blobs
    ]

    async def fire():
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            return await asyncio.gather(
                *[
                    client.post(ROUTE, data={"model": MODEL, "top_k": "4"}, files={"images": (f"{i}.png", b)})
                    for i, b in enumerate(blobs)
                ]
            )

    for i, r in enumerate(asyncio.run(fire())):
        assert r.status_code == 200, r.text
        (p,) = r.json()["predictions"]
        assert p["file"] == f"{i}.png"
        got = {e["label"]: e["score"] for e in p["top_k"]}
        want = {e["label"]: e["score"] for e in expected[i]["top_k"]}
        assert got.keys() == want.keys()
        assert (
            max(abs(got[k] - want[k]) for k in got) < 1e-4
        )  # static INT8 ranges are fixed: batch-mates do not move scores
