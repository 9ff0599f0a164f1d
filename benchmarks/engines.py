"""Every built default model's engine, before and after, side by side in one run: ONNX from the
TorchScript-based exporter (what `tuneserve build` ships) and from torch.export's exporter
(`torch.onnx.export(..., dynamo=True)`), each in fp32 and static INT8.

For each model in the repository built from a default recipe: the shipped model.onnx and
model.int8.onnx; the same weights (the eager model rebuilt from model.ts) exported again with the
dynamo exporter; and that graph quantised exactly as the build quantises (the recipe's calibration
inputs, the task's operator types). Inputs are the recipe's own validation examples, batches of
1/8/32. Each engine's largest difference from the shipped fp32 graph and (classifiers) its argmax
agreement are recorded beside its speed; a graph that cannot be made is recorded with the reason.
Writes benchmarks/results/engines.{json,md}.
Run: `python benchmarks/engines.py [--models a,b]` (after `make models`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import eager_model, machine_info, time_engines, write_results
from benchmarks.report import engines as section
from serving.manifest import load_manifest
from serving.sessions import create_session
from training.backbones import get_backbone
from training.export import export_onnx
from training.quantise import quantise_static_int8
from training.recipe import Recipe, list_recipes, load_recipe
from training.tasks import get_task

BATCHES = (1, 8, 32)


def feeds_of(task, split, batch: int) -> dict[str, np.ndarray]:
    """The first `batch` validation examples (repeated when the split is smaller), as the task feeds them."""
    chunks: list[dict[str, np.ndarray]] = []
    while sum(len(next(iter(c.values()))) for c in chunks) < batch:
        for inputs, _ in task.loader(split, shuffle=False, batch_size=batch):
            chunks.append({k: v.numpy() for k, v in inputs.items()})
    if len(chunks) == 1:
        return {k: v[:batch] for k, v in chunks[0].items()}
    width = {k: max(c[k].shape[1] if c[k].ndim > 1 else 0 for c in chunks) for k in chunks[0]}

    def padded(a: np.ndarray, k: str) -> np.ndarray:  # text batches differ in length
        if a.ndim < 2 or a.shape[1] == width[k]:
            return a
        pad = [(0, 0), (0, width[k] - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        return np.pad(a, pad)

    return {k: np.concatenate([padded(c[k], k) for c in chunks])[:batch] for k in chunks[0]}


def measure(name: str, repository: Path, seconds: float, threads: int, work: Path) -> dict[str, Any]:
    folder = repository / name
    manifest = load_manifest(folder)
    recipe = Recipe.model_validate(manifest.recipe)
    task = get_task(manifest.task)(recipe, get_backbone(recipe.backbone))
    task.progress = False
    task.restore(manifest.preprocessing)
    splits = task.load_data()
    paths: dict[str, Path] = {"fp32, TorchScript-based exporter": folder / manifest.variants["fp32"].file}
    if "int8" in manifest.variants:
        paths["int8, TorchScript-based exporter"] = folder / manifest.variants["int8"].file
    problems: dict[str, str] = {}
    export_seconds: dict[str, float] = {}
    dynamo = work / f"{name}.dynamo.onnx"
    try:
        model = eager_model(folder)
        started = time.perf_counter()
        export_onnx(model, task, task.example_inputs(splits.val), dynamo, recipe.export.opset, dynamo=True)
        export_seconds["dynamo"] = time.perf_counter() - started
        paths["fp32, dynamo exporter"] = dynamo
    except Exception as exc:  # a model the exporter cannot take: recorded, not timed
        problems["fp32, dynamo exporter"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:240]}"
    if "fp32, dynamo exporter" in paths and "int8" in manifest.variants and recipe.quantise.mode == "static":
        try:
            quantise_static_int8(
                dynamo,
                work / f"{name}.dynamo.int8.onnx",
                task.calibration_inputs(splits, recipe.quantise.calibration_size),
                symbolic_shapes=task.quantise_symbolic_shapes,
                op_types=task.quantise_op_types,
                float_outputs=task.quantise_float_outputs,
            )
            paths["int8, dynamo exporter"] = work / f"{name}.dynamo.int8.onnx"
        except Exception as exc:
            problems["int8, dynamo exporter"] = (
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:240]}"
            )

    sessions = {k: create_session(p, threads, ["CPUExecutionProvider"])[0] for k, p in paths.items()}
    checks = feeds_of(task, splits.val, 32)
    reference = sessions["fp32, TorchScript-based exporter"].run(None, checks)[0]
    quality = {}
    classifies = manifest.task.endswith("classification")  # one score per label: the argmax is the answer
    for engine, session in sessions.items():
        out = session.run(None, checks)[0]
        quality[engine] = {
            "max_abs_diff": float(np.abs(out - reference).max()),
            "argmax_agreement": float((out.argmax(-1) == reference.argmax(-1)).mean())
            if classifies
            else None,
        }
    rows: list[dict[str, Any]] = []
    for batch in BATCHES:
        feeds = feeds_of(task, splits.val, batch)
        rows += time_engines(
            {k: (lambda s=s, f=feeds: s.run(None, f)) for k, s in sessions.items()}, batch, seconds, "item"
        )
    return {
        "task": manifest.task,
        "served_cpu": manifest.default_variant["cpu"],
        "engines": rows,
        "quality": quality,
        "problems": problems,
        "export_seconds": export_seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path, default=ROOT / "exported")
    ap.add_argument("--models", default="", help="comma-separated; default: every built default recipe")
    ap.add_argument("--seconds", type=float, default=1.0, help="timing per engine and batch size")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    names = args.models.split(",") if args.models else [n for n in list_recipes() if load_recipe(n).default]
    built = [n for n in names if (args.repository / n / "manifest.json").exists()]
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in built:
            print(f"{name}:", flush=True)
            models[name] = measure(name, args.repository, args.seconds, args.threads, Path(tmp))
    report = {
        "models": models,
        "not_built": sorted(set(names) - set(built)),
        "batches": list(BATCHES),
        "config": {"threads": args.threads, "seconds": args.seconds},
        "machine": machine_info(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_results(
        "engines",
        report,
        ["# Engines: exporters, fp32 and INT8, every default model", "", *section(report), ""],
    )


if __name__ == "__main__":
    main()
