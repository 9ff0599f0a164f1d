"""Image classification, measured side by side in one run:

1. engines on the same pre-processed batches: PyTorch eager, ONNX Runtime fp32 and INT8, batch 1/8/32;
2. the served endpoint (a real BentoML server on a local port) at concurrency 1/8/32, one JPEG per
   request, so decoding and resizing are in the loop.

Writes benchmarks/results/image_classify.{json,md}. Run: `make bench` or
`python benchmarks/image_classify.py --model surface-defects`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (
    eager_model,
    machine_info,
    model_benchmark_args,
    serve_and_sweep,
    served_table,
    time_engines,
    write_results,
)
from serving.loadtest.payloads import Payload
from serving.manifest import load_manifest
from serving.processing import ImagePreprocessor, decode_image
from serving.sessions import create_session
from training.data.images import read_class_folder, resolve_dataset_folder
from training.recipe import Recipe

ROUTE = "/v1/image/classify"


def sample_files(manifest, count: int) -> list[Path]:
    recipe = Recipe.model_validate(manifest.recipe)
    paths, _ = read_class_folder(resolve_dataset_folder(recipe.data.source, recipe.data.seed))
    rng = np.random.default_rng(0)
    return [paths[i] for i in rng.choice(len(paths), size=min(count, len(paths)), replace=False)]


def engines(
    model_dir: Path, manifest, images: list[np.ndarray], batch_sizes: list[int], seconds: float, threads: int
) -> list[dict]:
    eager = eager_model(model_dir)
    torch.set_num_threads(threads)
    sessions = {
        v: create_session(model_dir / manifest.variants[v].file, threads, ["CPUExecutionProvider"])[0]
        for v in manifest.variants
    }
    rows = []
    for bs in batch_sizes:
        batch = np.stack([images[i % len(images)] for i in range(bs)])
        tensor = torch.from_numpy(batch)

        def run_eager():
            with torch.inference_mode():
                eager(tensor)

        runs = {"pytorch_eager": run_eager}
        for variant, session in sessions.items():
            name = session.get_inputs()[0].name
            runs[f"onnxruntime_{variant}"] = lambda s=session, n=name: s.run(None, {n: batch})
        rows += time_engines(runs, bs, seconds, "images")
    return rows


def main() -> None:
    args = model_benchmark_args(__doc__, "surface-defects", "1,8,32")

    repository = Path(args.repository)
    model_dir = repository / args.model
    manifest = load_manifest(model_dir)
    files = sample_files(manifest, 64)
    pre = ImagePreprocessor.from_config(manifest.preprocessing)
    images = [pre(decode_image(p.read_bytes())) for p in files]
    jpegs = [
        cv2.imencode(".jpg", cv2.imread(str(p)), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for p in files
    ]
    payloads = [
        Payload(
            files=((f"{i}.jpg", data, "image/jpeg"),), file_field="images", fields=(("model", args.model),)
        )
        for i, data in enumerate(jpegs)
    ]

    print(f"engines ({args.threads} threads):", flush=True)
    engine_rows = engines(
        model_dir,
        manifest,
        images,
        [int(b) for b in args.batches.split(",")],
        args.engine_seconds,
        args.threads,
    )
    print("served endpoint (one JPEG per request):", flush=True)
    info, served = serve_and_sweep(
        repository,
        args.model,
        ROUTE,
        payloads,
        [int(c) for c in args.concurrency.split(",")],
        args.served_seconds,
    )

    variant = info["variant"]
    raw32 = next(
        e["images_per_s"] for e in engine_rows if e["engine"] == f"onnxruntime_{variant}" and e["batch"] == 32
    )
    c32 = next((s for s in served if s["load"] == 32), served[-1])
    ratios = {
        "served_c32_vs_engine_b32": c32["throughput_rps"] / raw32,
        "int8_vs_fp32_b32": next(
            e["images_per_s"] for e in engine_rows if e["engine"] == "onnxruntime_int8" and e["batch"] == 32
        )
        / next(
            e["images_per_s"] for e in engine_rows if e["engine"] == "onnxruntime_fp32" and e["batch"] == 32
        ),
        "errors_total": sum(s["errors"] for s in served),
    }
    report = {
        "model": args.model,
        "served_variant": variant,
        "served_reason": manifest.default_reason,
        "served_accuracy": manifest.variants[variant].metrics.get("accuracy"),
        "machine": machine_info(),
        "config": vars(args),
        "engines": engine_rows,
        "served": served,
        "ratios": ratios,
    }
    lines = [
        f"# Image classification benchmark — `{args.model}`",
        "",
        f"{report['machine']['cores']} cores, ONNX Runtime {report['machine']['onnxruntime']}, torch {report['machine']['torch']}; "
        f"{args.threads} intra-op threads; served variant `{variant}` ({manifest.default_reason}).",
        "",
        "## Engines (same pre-processed batches)",
        "",
        "| engine | batch | images/s | ms/batch |",
        "|---|---:|---:|---:|",
        *[
            f"| {e['engine']} | {e['batch']} | {e['images_per_s']:.1f} | {e['ms_per_batch']:.1f} |"
            for e in engine_rows
        ],
        "",
        "## Served endpoint (`POST /v1/image/classify`, one JPEG per request, decoding in the loop)",
        "",
        *served_table(served, "images/s"),
        "",
        "## Ratios",
        "",
        f"- served images/s at concurrency 32 vs raw `{variant}` engine at batch 32: **{ratios['served_c32_vs_engine_b32'] * 100:.1f}%** (target ≥ 60%)",
        f"- INT8 vs fp32 engine at batch 32: **{ratios['int8_vs_fp32_b32']:.2f}×**",
        f"- non-2xx responses at concurrency ≤ 32: **{ratios['errors_total']}** (target 0)",
        "",
    ]
    write_results("image_classify", report, lines)


if __name__ == "__main__":
    main()
