"""OCR served: an A5 page (150 dpi, 874 x 1240 pixels, a line of text every 44 pixels, 26-pixel
type) sent to POST /v1/image/ocr of a real `bentoml serve`, one request at a time: latency
percentiles, and the page's character error rate (spaces ignored); beside it, the error rate over
single lines in every font (rotated up to 2.5 degrees, blurred, JPEG 75) read in-process, and how
the time of one page splits between the three models and the steps around them.

Writes benchmarks/results/ocr.{json,md}. Run: `python benchmarks/ocr.py [--requests 20]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import onnxruntime

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import server, tuneserve_server, write_results
from serving.runtime import Runtime
from serving.settings import Settings
from serving.tasks import FileRequest, Upload
from training.data.text_images import LINES, character_errors, degrade, fonts, page, render
from training.importer import import_rapidocr

PAGE_TEXTS = [LINES[i % len(LINES)] for i in range(26)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def timed_stages(task, image: np.ndarray) -> dict[str, float]:
    """Milliseconds of one page in each model (wrapping the reader's model calls) and in total."""
    reader = task.reader
    spent = {"detector": 0.0, "orientation": 0.0, "recogniser": 0.0}
    originals = {name: getattr(reader, name) for name in spent}

    def timing(name: str):
        def run(batch: np.ndarray) -> np.ndarray:
            started = time.perf_counter()
            out = originals[name](batch)
            spent[name] += (time.perf_counter() - started) * 1000
            return out

        return run

    for name in spent:
        setattr(reader, name, timing(name))
    try:
        started = time.perf_counter()
        reader.read(image)
        total = (time.perf_counter() - started) * 1000
    finally:
        for name, original in originals.items():
            setattr(reader, name, original)
    return {**{k: round(v, 1) for k, v in spent.items()}, "total": round(total, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20)
    args = ap.parse_args()

    repository = Path(tempfile.mkdtemp(prefix="tuneserve-ocr-"))
    manifest = import_rapidocr("ocr", repository)
    sheet = page(PAGE_TEXTS, fonts(26)[0], 26)
    png = cv2.imencode(".png", sheet)[1].tobytes()
    truth = " ".join(t for t in PAGE_TEXTS)

    argv, port, env = tuneserve_server(repository)
    latencies = []
    with server(argv, port, env) as base, httpx.Client(base_url=base, timeout=120) as client:
        files = [("images", ("page.png", png, "image/png"))]
        answer = client.post("/v1/image/ocr", files=files)  # warm-up
        answer.raise_for_status()
        for _ in range(args.requests):
            started = time.perf_counter()
            client.post("/v1/image/ocr", files=files).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
    lines = answer.json()["predictions"][0]["lines"]
    page_errors, page_chars = character_errors(" ".join(line["text"] for line in lines), truth)

    settings = Settings(repository=repository, device="cpu")
    task = Runtime(settings).models["ocr"].task
    stages = timed_stages(task, cv2.cvtColor(sheet, cv2.COLOR_GRAY2BGR))
    rng = np.random.default_rng(5)
    faces = fonts(28)
    errors = characters = 0
    for font in faces:
        for text in LINES:
            data = degrade(render(text, font), rng)
            (prediction,) = task.predict(FileRequest(None, [Upload(0, "line.jpg", data)]))["predictions"]
            e, n = character_errors(" ".join(line["text"] for line in prediction["lines"]), text)
            errors, characters = errors + e, characters + n

    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
        },
        "config": {"threads": settings.intra_op_threads()},
        "model": {k: manifest.source[k] for k in ("package", "version", "licence", "sha256")},
        "page": {
            "pixels": list(sheet.shape[::-1]),
            "text_lines": len(PAGE_TEXTS),
            "lines_read": len(lines),
            "requests": args.requests,
            "p50_ms": round(percentile(latencies, 50), 1),
            "p90_ms": round(percentile(latencies, 90), 1),
            "mean_ms": round(statistics.fmean(latencies), 1),
            "cer": page_errors / page_chars,
            "stages_ms": stages,
        },
        "lines": {"images": len(faces) * len(LINES), "fonts": len(faces), "cer": errors / characters},
    }
    p = report["page"]
    write_results(
        "ocr",
        report,
        [
            "# OCR served",
            "",
            f"{manifest.source['package']} {manifest.source['version']} ({manifest.source['licence']}); "
            f"{os.cpu_count()} cores, ONNX Runtime {onnxruntime.__version__}, {report['date']}.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| A5 page ({p['pixels'][0]} x {p['pixels'][1]}, {p['text_lines']} lines): served p50 | {p['p50_ms']:.0f} ms |",
            f"| served p90 | {p['p90_ms']:.0f} ms |",
            f"| page character error rate (spaces ignored) | {p['cer']:.2%} |",
            f"| lines read on the page | {p['lines_read']} of {p['text_lines']} |",
            f"| one page in-process: detector / orientation / recogniser / total | "
            f"{stages['detector']:.0f} / {stages['orientation']:.0f} / {stages['recogniser']:.0f} / {stages['total']:.0f} ms |",
            f"| single lines ({report['lines']['images']} in {report['lines']['fonts']} fonts, rotated, blurred, JPEG): character error rate | {report['lines']['cer']:.2%} |",
            "",
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
