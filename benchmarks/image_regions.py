"""Segmentation and detection (`defect-segmentation`, `defect-detection`), measured side by side in one run:

1. engines on the same letterboxed batches: PyTorch eager, ONNX Runtime fp32 and INT8, batch 1/4/8;
2. the served endpoint (`POST /v1/image/segment` or `/v1/image/detect`, a real BentoML server on a
   local port) at concurrency 1/8/32, one generated test scene per request as JPEG, so decoding,
   letterboxing and the post-processing (masks and regions, or peaks, boxes and NMS) are in the loop;
3. the build's picture of its predictions on test images, copied beside the results.

Writes benchmarks/results/image_regions_<segmentation|detection>.{json,md,_predictions.png}. Run:
`python benchmarks/image_regions.py --model defect-segmentation` (then `--model defect-detection`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (
    RESULTS,
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
from serving.processing import decode_image
from serving.processing.letterbox import Letterbox
from serving.sessions import create_session
from serving.tasks import TASKS
from training.data.defect_scenes import read_mask_folder, resolve_scene_folder
from training.recipe import Recipe

ENGINE_BATCH = 4  # the served variant's engine at this batch is what the served rate is compared with


def main() -> None:
    args = model_benchmark_args(__doc__, "defect-segmentation", "1,8,32")
    if args.batches == "1,8,32":
        args.batches = "1,4,8"
    repository = Path(args.repository)
    model_dir = repository / args.model
    manifest = load_manifest(model_dir)
    task = TASKS[manifest.task]
    kind = "segmentation" if manifest.task == "image-segmentation" else "detection"
    recipe = Recipe.model_validate(manifest.recipe)
    scenes = read_mask_folder(resolve_scene_folder(recipe.data.source, recipe.data.seed))[-64:]
    letterbox = Letterbox.from_config(manifest.preprocessing)
    images = [letterbox(decode_image(s.image.read_bytes()))[0] for s in scenes]
    jpegs = [
        cv2.imencode(".jpg", cv2.imread(str(s.image)), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        for s in scenes
    ]
    payloads = [
        Payload(
            files=((f"{i}.jpg", data, "image/jpeg"),), file_field="images", fields=(("model", args.model),)
        )
        for i, data in enumerate(jpegs)
    ]

    print(f"engines ({args.threads} threads):", flush=True)
    eager = eager_model(model_dir)
    torch.set_num_threads(args.threads)
    sessions = {
        v: create_session(model_dir / manifest.variants[v].file, args.threads, ["CPUExecutionProvider"])[0]
        for v in manifest.variants
        if v != "fp16"  # the GPU variant: on a CPU it measures nothing useful
    }
    engine_rows = []
    for bs in [int(b) for b in args.batches.split(",")]:
        batch = np.stack([images[i % len(images)] for i in range(bs)])
        tensor = torch.from_numpy(batch)

        def run_eager(t=tensor):
            with torch.inference_mode():
                eager(t)

        runs = {"pytorch_eager": run_eager}
        for variant, session in sessions.items():
            name = session.get_inputs()[0].name
            runs[f"onnxruntime_{variant}"] = lambda s=session, n=name, b=batch: s.run(None, {n: b})
        engine_rows += time_engines(runs, bs, args.engine_seconds, "images")

    route = "/v1" + task.route
    print(f"served endpoint ({route}, one JPEG per request):", flush=True)
    info, served = serve_and_sweep(
        repository,
        args.model,
        route,
        payloads,
        [int(c) for c in args.concurrency.split(",")],
        args.served_seconds,
    )
    variant = info["variant"]

    def engine(name: str, bs: int) -> float:
        return next(e["images_per_s"] for e in engine_rows if e["engine"] == name and e["batch"] == bs)

    c32 = next((s for s in served if s["load"] == 32), served[-1])
    largest = max(int(b) for b in args.batches.split(","))
    ratios = {
        f"served_c32_vs_engine_b{ENGINE_BATCH}": c32["throughput_rps"]
        / engine(f"onnxruntime_{variant}", ENGINE_BATCH),
        f"int8_vs_fp32_b{largest}": engine("onnxruntime_int8", largest) / engine("onnxruntime_fp32", largest)
        if "int8" in sessions
        else None,
        "errors_total": sum(s["errors"] for s in served),
    }
    metric = manifest.metrics["decisive"]
    quality = {
        name: {k: v for k, v in manifest.variants[name].metrics.items() if k != "n"} for name in sessions
    }
    picture = None
    # figure paths are relative to the folder holding the repository (training/pipeline.py)
    figure = repository.resolve().parent / manifest.metrics.get("figures", {}).get("predictions", "-")
    if figure.is_file():
        picture = f"image_regions_{kind}_predictions.png"
        shutil.copyfile(figure, RESULTS / picture)
    report = {
        "model": args.model,
        "task": manifest.task,
        "served_variant": variant,
        "served_reason": manifest.default_reason,
        "decisive_metric": metric,
        "served_metric": manifest.variants[variant].metrics.get(metric),
        "quality": quality,
        "build_seconds": manifest.build.get("seconds"),
        "picture": picture,
        "machine": machine_info(),
        "config": vars(args),
        "engines": engine_rows,
        "served": served,
        "ratios": ratios,
    }
    lines = [
        f"# {kind.capitalize()} benchmark — `{args.model}`",
        "",
        f"{report['machine']['cores']} cores; served variant `{variant}` ({manifest.default_reason}).",
        "",
        "| engine | batch | images/s | ms/batch |",
        "|---|---:|---:|---:|",
        *[
            f"| {e['engine']} | {e['batch']} | {e['images_per_s']:.1f} | {e['ms_per_batch']:.1f} |"
            for e in engine_rows
        ],
        "",
        *served_table(served, "images/s"),
        "",
        f"- served images/s at concurrency 32 vs `{variant}` engine at batch {ENGINE_BATCH}: "
        f"**{ratios[f'served_c32_vs_engine_b{ENGINE_BATCH}'] * 100:.1f}%** (target ≥ 70%)",
        f"- test {metric} of the served variant: **{report['served_metric']:.4f}**",
        "",
    ]
    write_results(f"image_regions_{kind}", report, lines)


if __name__ == "__main__":
    main()
