"""Every built default model's engine, before and after, side by side in one run: ONNX from the
TorchScript-based exporter (what `tuneserve build` ships) and from torch.export's exporter
(`torch.onnx.export(..., dynamo=True)`), each in fp32 and static INT8.

For each model in the repository built from a default recipe, the shipped weights (the eager model
rebuilt from model.ts) are exported again with each exporter, and each graph is quantised exactly as
the build quantises (the recipe's calibration inputs, the task's operator types). A model whose
rebuilt eager model does not reproduce the shipped graph's outputs is not re-exported: its shipped
files are timed and the reason recorded. Inputs are the recipe's own validation examples, batches of
1/8/32. Each engine's largest difference from the shipped fp32 graph and (classifiers) its argmax
agreement are recorded beside its speed; a graph that cannot be made is recorded with the reason.
Writes benchmarks/results/engines.{json,md}.
Run: `python benchmarks/engines.py [--models a,b] [--merge]` (after `make models`); `--merge` keeps
the models already in the results that this run does not measure (e.g. to add a non-default model).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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
from training.export import export_onnx, first_line
from training.quantise import quantise_static_int8
from training.recipe import Recipe, list_recipes, load_recipe
from training.tasks import get_task

BATCHES = (1, 8, 32)
EXPORTERS = {"torchscript": "TorchScript-based exporter", "dynamo": "dynamo exporter"}
EAGER_TOLERANCE = 1e-3


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
    shipped_fp32 = folder / manifest.variants["fp32"].file
    shipped = (
        "dynamo"
        if "dynamo=True" in manifest.build.get("exports", {}).get("onnx", {}).get("exporter", "")
        else "torchscript"
    )
    checks = feeds_of(task, splits.val, 32)
    reference = create_session(shipped_fp32, threads, ["CPUExecutionProvider"])[0].run(None, checks)[0]
    paths: dict[str, Path] = {}
    problems: dict[str, str] = {}
    export_seconds: dict[str, float] = {}
    model = eager_model(folder)
    import torch

    with torch.no_grad():
        eager = model(*(torch.from_numpy(v) for v in checks.values())).numpy()
    drift = float(np.abs(eager - reference).max())
    if drift > EAGER_TOLERANCE:  # re-exporting it would not reproduce the shipped model
        problems["re-export"] = (
            f"the eager model rebuilt from model.ts differs from the shipped graph (max |diff| {drift:.3g}); "
            "only the shipped files are timed"
        )
        paths[f"fp32, {EXPORTERS[shipped]}"] = shipped_fp32
        if "int8" in manifest.variants:
            paths[f"int8, {EXPORTERS[shipped]}"] = folder / manifest.variants["int8"].file
    for exporter, label in EXPORTERS.items() if not problems else ():
        fp32 = work / f"{name}.{exporter}.onnx"
        try:
            started = time.perf_counter()
            export_onnx(
                model,
                task,
                task.example_inputs(splits.val),
                fp32,
                recipe.export.opset,
                dynamo=exporter == "dynamo",
            )
            export_seconds[exporter] = time.perf_counter() - started
            paths[f"fp32, {label}"] = fp32
        except Exception as exc:  # a model the exporter cannot take: recorded, not timed
            problems[f"fp32, {label}"] = first_line(exc)
            continue
        if "int8" in manifest.variants and recipe.quantise.mode == "static":
            try:
                quantise_static_int8(
                    fp32,
                    work / f"{name}.{exporter}.int8.onnx",
                    task.calibration_inputs(splits, recipe.quantise.calibration_size),
                    symbolic_shapes=task.quantise_symbolic_shapes,
                    op_types=task.quantise_op_types,
                    float_outputs=task.quantise_float_outputs,
                )
                paths[f"int8, {label}"] = work / f"{name}.{exporter}.int8.onnx"
            except Exception as exc:
                problems[f"int8, {label}"] = first_line(exc)

    sessions = {k: create_session(p, threads, ["CPUExecutionProvider"])[0] for k, p in paths.items()}
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
        "shipped_exporter": EXPORTERS[shipped],
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
    ap.add_argument("--merge", action="store_true", help="keep the other models of the existing results")
    args = ap.parse_args()
    names = args.models.split(",") if args.models else [n for n in list_recipes() if load_recipe(n).default]
    built = [n for n in names if (args.repository / n / "manifest.json").exists()]
    models: dict[str, Any] = {}
    if args.merge:
        earlier = json.loads((ROOT / "benchmarks" / "results" / "engines.json").read_text())
        models = {n: m for n, m in earlier["models"].items() if n not in built}
    with tempfile.TemporaryDirectory() as tmp:
        for name in built:
            print(f"{name}:", flush=True)
            models[name] = measure(name, args.repository, args.seconds, args.threads, Path(tmp))
    report = {
        "models": dict(sorted(models.items())),
        "not_built": sorted(set(names) - set(built)),
        "batches": list(BATCHES),
        "config": {"threads": args.threads, "seconds": args.seconds},
        "machine": machine_info(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_results(
        "engines",
        report,
        ["# Engines: exporters, fp32 and INT8, per model", "", *section(report), ""],
    )


if __name__ == "__main__":
    main()
