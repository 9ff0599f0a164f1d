"""Image decoding and pre-processing, shared by training and serving (OpenCV + numpy).

`decode_image` turns uploaded bytes into an RGB uint8 array: JPEG, PNG, BMP, WebP and TIFF, EXIF
orientation applied, grey → 3 channels, alpha dropped, 16-bit → 8-bit. It refuses empty, truncated,
oversized and non-image input with a message, and bounds the memory a file can cost from its header,
before any pixel is decoded: the header's pixel count (decompression bombs), and the pixels it will
decode to — a JPEG larger than the model needs is decoded at 1/2, 1/4 or 1/8 scale by libjpeg
itself. `ImagePreprocessor` resizes the shorter side, centre-crops and scales to the model's input,
never resizing more of a long thin image than its centre crop needs.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import numpy as np

from serving.errors import InputError

# OpenCV's own guard against decompression bombs; our header check below gives the clear message.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(50_000_000))
import cv2

MAX_IMAGE_PIXELS = 50_000_000  # in the header, whatever the format
MAX_DECODED_PIXELS = 16_000_000  # what one image may decode to (3 bytes each, plus OpenCV's working copies)
FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "MPO"}
# libjpeg decodes at these scales directly, at the memory of the smaller image
REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


class ImageError(InputError):
    """The bytes are not an image this server can use; the message says why."""


def _header(data: bytes) -> tuple[str, int, int]:
    """Format, width and height from the file header only (Pillow reads no pixels here)."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # we apply our own, lower limit with a clear message
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format or "", im.width, im.height
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format; send JPEG, PNG, BMP, WebP or TIFF)") from None
    except Exception as exc:  # Pillow raises various errors on mangled headers
        raise ImageError(f"not a readable image header ({type(exc).__name__})") from None


def decode_image(
    data: bytes,
    max_bytes: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_decoded_pixels: int = MAX_DECODED_PIXELS,
    min_side: int | None = None,
) -> np.ndarray:
    """Bytes → (H, W, 3) uint8 RGB. Raises ImageError naming what is wrong. The server's file size
    limit (TUNESERVE_MAX_FILE_MB) is applied before decoding; `max_bytes` is for other callers.
    `min_side`: the shorter side the caller needs at least; a JPEG whose shorter side is several times
    that is decoded at a reduced scale that still has it."""
    if not data:
        raise ImageError("zero bytes")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError(f"{len(data) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB")
    fmt, width, height = _header(data)
    if fmt not in FORMATS:
        raise ImageError(f"{fmt or 'unknown'} images are not supported; send JPEG, PNG, BMP, WebP or TIFF")
    if width * height > max_pixels:
        raise ImageError(
            f"{width}x{height} is {width * height / 1e6:.0f} megapixels; the limit is {max_pixels / 1e6:.0f}"
        )
    jpeg = fmt in ("JPEG", "MPO")
    if jpeg and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageError("truncated JPEG (no end-of-image marker)")
    factor = 1
    while jpeg and min_side and factor < 8 and min(width, height) // (2 * factor) >= min_side:
        factor *= 2
    decoded = math.ceil(width / factor) * math.ceil(height / factor)
    if decoded > max_decoded_pixels:
        raise ImageError(
            f"{width}x{height} decodes to {decoded / 1e6:.1f} megapixels; the limit is "
            f"{max_decoded_pixels / 1e6:.0f} (send a smaller image, or a JPEG)"
        )
    # IMREAD_COLOR: grey → BGR, alpha dropped, EXIF orientation applied; ANYDEPTH keeps 16-bit for us
    # to scale. The reduced JPEG modes include IMREAD_COLOR (and JPEG is 8-bit).
    flags = REDUCED[factor] if factor > 1 else cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None or image.size == 0:
        raise ImageError(f"corrupt or truncated {fmt} data")
    image = to_uint8(image)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second full-size copy


def to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:  # round(v / 257) in one pass, without a wider temporary
        return cv2.convertScaleAbs(image, alpha=1 / 257)
    if np.issubdtype(image.dtype, np.floating):
        return (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {image.dtype}")


KEEP_ASPECT = 4  # images up to 4:1 are resized whole, exactly as before this cut existed


Scale = float | tuple[float, ...]  # one value for every channel, or one per channel


@dataclass(frozen=True)
class ImagePreprocessor:
    """Resize the shorter side, centre-crop, put the channels in the model's order (RGB or BGR),
    scale (x - mean) / std (pixel units, 0-255; one value or one per channel in the model's order),
    HWC → CHW float32."""

    resize_shorter: int = 256
    crop: int = 224
    mean: Scale = 127.0
    std: Scale = 128.0
    colour: str = "RGB"

    def __post_init__(self) -> None:
        if self.colour not in ("RGB", "BGR"):
            raise ValueError(f"colour: {self.colour!r}; expected RGB or BGR")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if len(value) != 3:
                    raise ValueError(f"{name}: one value or three (one per channel), not {len(value)}")
                object.__setattr__(self, name, tuple(float(v) for v in value))
        stds = self.std if isinstance(self.std, tuple) else (self.std,)
        if any(v <= 0 for v in stds):
            raise ValueError(f"std: must be positive, not {self.std}")

    @classmethod
    def from_config(cls, config: dict) -> ImagePreprocessor:
        def scale(value: float | list[float]) -> Scale:
            return tuple(float(v) for v in value) if isinstance(value, list) else float(value)

        return cls(
            int(config["resize_shorter"]),
            int(config["crop"]),
            scale(config["mean"]),
            scale(config["std"]),
            str(config.get("colour", "RGB")),
        )

    def config(self) -> dict:
        return {
            "resize_shorter": self.resize_shorter,
            "crop": self.crop,
            "mean": list(self.mean) if isinstance(self.mean, tuple) else self.mean,
            "std": list(self.std) if isinstance(self.std, tuple) else self.std,
            "colour": self.colour,
            "layout": "NCHW",
            "resize": "shorter side, area interpolation when shrinking",
            "crop_mode": "centre",
        }

    def resize_and_crop(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        scale = self.resize_shorter / min(h, w)
        # Only the centre crop is used, so a long side beyond KEEP_ASPECT times the short one is cut
        # to its centre first: resizing all of a 10000x1 strip would allocate gigabytes.
        keep = KEEP_ASPECT * min(h, w)
        if w > keep:
            rgb = rgb[:, (w - keep) // 2 : (w - keep) // 2 + keep]
        if h > keep:
            rgb = rgb[(h - keep) // 2 : (h - keep) // 2 + keep]
        h, w = rgb.shape[:2]
        size = (max(self.crop, round(w * scale)), max(self.crop, round(h * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(rgb, size, interpolation=interpolation)
        top, left = (size[1] - self.crop) // 2, (size[0] - self.crop) // 2
        return resized[top : top + self.crop, left : left + self.crop]

    def normalise(self, rgb_uint8: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB → (3, H, W) float32 scaled; training's augmented crops end here too."""
        pixels = rgb_uint8[..., ::-1] if self.colour == "BGR" else rgb_uint8
        mean, std = (
            np.asarray(self.mean, np.float32),
            np.asarray(self.std, np.float32),
        )  # broadcast over the channel axis
        return ((pixels.astype(np.float32) - mean) / std).transpose(2, 0, 1).copy()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.normalise(self.resize_and_crop(rgb))
