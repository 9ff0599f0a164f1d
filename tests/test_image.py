"""Image decoding and pre-processing (shared by training and serving), the backbone mapping, and the
image model built in the session."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from serving.processing import ImageError, ImagePreprocessor, decode_image
from serving.runtime import Runtime
from serving.settings import Settings
from serving.tasks import FileRequest, Upload

SKIMAGE = Path(skimage.data.__file__).parent


def encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage.data.chelsea()  # 300 x 451 RGB


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tiff", ".webp", ".jpg"])
def test_formats_decode_to_rgb(photo, ext):
    out = decode_image(encode(photo, ext))
    assert out.shape == photo.shape and out.dtype == np.uint8
    tolerance = 0 if ext in (".png", ".bmp", ".tiff") else 12  # lossless formats are exact
    assert np.abs(out.astype(int) - photo).mean() <= tolerance


def test_grey_alpha_and_16_bit(photo):
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    out = decode_image(encode(grey, ".png"))
    assert out.shape == (*grey.shape, 3) and (out[..., 0] == grey).all() and (out[..., 2] == grey).all()
    rgba = np.dstack([photo, np.full(photo.shape[:2], 7, np.uint8)])
    _ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert (decode_image(buf.tobytes()) == photo).all()
    wide = photo.astype(np.uint16) * 257
    assert (decode_image(encode(wide, ".png")) == photo).all()


def test_exif_orientation_is_applied(photo):
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored as landscape, to be shown rotated 90° clockwise
    Image.fromarray(photo).save(buf, format="JPEG", quality=95, exif=exif)
    out = decode_image(buf.getvalue())
    assert out.shape == (photo.shape[1], photo.shape[0], 3)
    assert np.abs(out.astype(int) - np.rot90(photo, k=-1)).mean() < 12


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"", "zero bytes"),
        (b"just some text, not an image", "not an image"),
        (None, "truncated JPEG"),
        (_png_header_only(10_000, 10_000), "megapixels"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * (21 * 1024 * 1024), "limit is 20 MiB"),
        (_png_header_only(64, 64), "corrupt"),
    ],
)
def test_bad_images_are_refused_with_a_reason(photo, data, needle):
    if data is None:
        data = encode(photo, ".jpg")[:4000]
    with pytest.raises(ImageError, match=needle):
        decode_image(data, max_bytes=20 * 2**20)  # the server checks TUNESERVE_MAX_FILE_MB before decoding


def test_preprocessor_resizes_shorter_side_and_centre_crops(photo):
    pre = ImagePreprocessor(resize_shorter=256, crop=224)
    out = pre(photo)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0  # (x - 127) / 128 for x in 0..255
    assert ImagePreprocessor.from_config(pre.config()) == pre


@pytest.mark.parametrize("photo_file,classes", [("chelsea.png", range(281, 286)), ("coffee.png", (967, 968))])
def test_pretrained_mapping_recognises_photos(photo_file, classes):
    """The lukemelas-named weights, mapped into timm, through the server's pre-processing:
    chelsea is a cat (ImageNet 281-285), coffee an espresso or cup (967, 968)."""
    import torch

    from training.backbones import get_backbone

    model = get_backbone("efficientnet-lite0").load().eval()
    image = ImagePreprocessor(256, 224)(decode_image((SKIMAGE / photo_file).read_bytes()))
    with torch.no_grad():
        top = int(model(torch.from_numpy(image[None])).argmax())
    assert top in classes, top


def test_training_and_serving_tensors_are_identical(tiny_repository):
    from training.backbones import get_backbone
    from training.recipe import Recipe
    from training.tasks import get_task

    runtime = Runtime(Settings(repository=tiny_repository, device="cpu", threads=1))
    model = runtime.models["surface-defects"]
    recipe = Recipe.model_validate(model.manifest.recipe)
    task = get_task(recipe.task)(recipe, get_backbone(recipe.backbone))
    splits = task.load_data()
    dataset = task.dataset(splits.test, train=False)
    for i, path in enumerate(splits.test.paths[:5]):
        served = model.task.prepare_file(Path(path).read_bytes())
        trained, _ = dataset[i]
        assert served.dtype == trained.dtype and np.array_equal(served, trained)


def test_tiny_image_model_cycle(tiny_repository):
    from serving.manifest import load_manifest

    m = load_manifest(tiny_repository / "surface-defects")
    assert m.task == "image-classification" and m.labels == ["ok", "scratch", "spot", "crack"]
    assert m.variants["fp32"].parity["max_abs_diff"] <= 1e-4 and m.variants["fp32"].parity["argmax_equal"]
    int8 = m.variants["int8"]
    assert (
        int8.note.startswith("static")
        and "speedup_vs_fp32" in int8.parity
        and int8.speed["ms_per_batch8"] > 0
    )
    assert m.default_reason
    assert [i.name for i in m.signature.inputs] == ["images"] and m.signature.inputs[0].shape == [
        "batch",
        3,
        64,
        64,
    ]
    for variant in ("fp32", "int8"):
        model = Runtime(
            Settings(repository=tiny_repository, device="cpu", variant=variant, threads=1)
        ).models["surface-defects"]
        data = (SKIMAGE / "coffee.png").read_bytes()
        (p,) = model.task.predict(FileRequest(None, [Upload(0, "coffee.png", data)], {"top_k": "3"}))[
            "predictions"
        ]
        assert (
            p["label"] in m.labels
            and len(p["top_k"]) == 3
            and p["top_k"][0]["score"] >= p["top_k"][1]["score"]
        )


def test_an_image_that_would_decode_too_large_is_refused_from_its_header():
    with pytest.raises(ImageError, match=r"5000x4000 decodes to 20\.0 megapixels; the limit is 16"):
        decode_image(_png_header_only(5000, 4000))


def test_a_large_jpeg_is_decoded_at_the_scale_the_model_needs(photo):
    big = cv2.resize(photo, (451 * 8, 300 * 8), interpolation=cv2.INTER_LINEAR)  # 3608 x 2400, 8.7 MP
    data = encode(big, ".jpg")
    full = decode_image(data)
    assert full.shape == (2400, 3608, 3)
    reduced = decode_image(data, min_side=256)
    assert reduced.shape == (300, 451, 3)  # 1/8: the shorter side still covers 256
    assert decode_image(data, min_side=700).shape == (1200, 1804, 3)  # 1/4 would leave 600 < 700
    # the reduced decode serves the model the same picture
    pre = ImagePreprocessor(256, 224)
    assert np.abs(pre(reduced) - pre(full)).mean() < 0.05
    # a JPEG whose full decode is over the limit is fine when the reduced one is not
    assert decode_image(data, max_decoded_pixels=2_000_000, min_side=256).shape == (300, 451, 3)
    with pytest.raises(ImageError, match="decodes to"):
        decode_image(data, max_decoded_pixels=2_000_000)


@pytest.mark.parametrize("shape", [(1, 10_000), (10_000, 1), (3, 40_000), (2, 9_000)])
def test_long_thin_images_cost_no_more_than_their_crop(shape):
    import tracemalloc

    strip = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    rgb = decode_image(encode(strip, ".png"))
    tracemalloc.start()
    try:
        out = ImagePreprocessor(256, 224)(rgb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (3, 224, 224) and np.isfinite(out).all()
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB to pre-process a {shape} strip"


def test_images_up_to_four_to_one_are_resized_whole_as_before(photo):
    """The centre cut only applies past 4:1, so ordinary pictures keep their exact tensors."""
    wide = np.concatenate([photo] * 3, axis=1)  # 300 x 1353, about 4.5:1 → cut
    pre = ImagePreprocessor(256, 224)
    h, w = photo.shape[:2]
    scale = 256 / min(h, w)
    size = (max(224, round(w * scale)), max(224, round(h * scale)))
    resized = cv2.resize(photo, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (size[1] - 224) // 2, (size[0] - 224) // 2
    expected = pre.normalise(resized[top : top + 224, left : left + 224])
    assert (pre(photo) == expected).all()
    assert pre(wide).shape == (3, 224, 224)
