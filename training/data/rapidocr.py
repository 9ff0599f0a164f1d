"""The PP-OCR models shipped inside the `rapidocr-onnxruntime` wheel (Apache-2.0).

The wheel is downloaded with `pip download --no-deps` into the data cache the first time and its
three ONNX files are read out of it; it is never installed (it pins `opencv-python`, which would
clash with the headless OpenCV the server uses)."""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from serving.manifest import sha256_file
from training.data.images import data_cache

log = logging.getLogger(__name__)

PACKAGE, VERSION = "rapidocr-onnxruntime", "1.4.4"
# what each file is in the model folder ← its path inside the wheel
MODELS = {
    "det.onnx": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "rec.onnx": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    "cls.onnx": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
}


@dataclass
class Wheel:
    path: Path
    version: str
    licence: str
    sha256: str

    def extract(self, folder: Path) -> dict[str, str]:
        """The three models into `folder`; returns file name → path in the wheel."""
        with zipfile.ZipFile(self.path) as archive:
            for name, inside in MODELS.items():
                (folder / name).write_bytes(archive.read(inside))
        return dict(MODELS)


def fetch_wheel(version: str = VERSION, cache: Path | None = None) -> Wheel:
    """The wheel from the data cache, downloaded from PyPI (pip's configured index) when missing."""
    folder = (cache or data_cache()) / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    pattern = f"{PACKAGE.replace('-', '_')}-{version}-*.whl"
    found = sorted(folder.glob(pattern))
    if not found:
        log.info("downloading %s==%s (its ONNX files only are used)", PACKAGE, version)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
             f"{PACKAGE}=={version}", "--dest", str(folder)],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        found = sorted(folder.glob(pattern))
        if done.returncode != 0 or not found:
            raise RuntimeError(f"pip download {PACKAGE}=={version} failed: {done.stderr.strip()[-500:]}")
    path = found[0]
    with zipfile.ZipFile(path) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = Parser().parsestr(archive.read(meta).decode())
    return Wheel(path, headers["Version"], headers.get("License") or "unknown", sha256_file(path))
