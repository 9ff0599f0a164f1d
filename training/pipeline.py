"""recipe → data → fine-tune → evaluate → export ONNX + TorchScript → parity → quantise → gate → exported/<name>/

Choices between models (early stopping, the INT8 gate, the backbone comparison, pruning) are made on
the validation split; the test split is only measured and reported (`variants[...].metrics`)."""

from __future__ import annotations

import datetime as dt
import logging
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime
import torch

from serving.manifest import Device, Manifest, Variant, write_manifest
from serving.sessions import cpu_int8_products
from serving.settings import Settings
from training.backbones import count_parameters, get_backbone
from training.evaluate import max_abs_diff, run_batches, torch_outputs
from training.export import (
    check_parity,
    export_and_check_program,
    export_onnx,
    export_torchscript,
    onnx_runner,
)
from training.fp16 import fp16_variant
from training.graph import onnx_signature
from training.logs import quieted
from training.loop import FitResult, fit, init_distributed, is_main_process, seed_everything
from training.quantise import quantise_dynamic_int8, quantise_static_int8, time_session
from training.recipe import Recipe
from training.tasks import get_task
from training.tasks.base import Batch

log = logging.getLogger(__name__)

# INT8 must be at least this much faster to count as faster: above the noise of repeated timings
MIN_SPEEDUP = 1.05


class GateError(RuntimeError):
    pass


@dataclass
class EvalSplit:
    """A split's batches (the server's pre-processing) and their targets collected for `task.metrics`."""

    batches: list[Batch]
    targets: Any


@dataclass
class BuildResult:
    directory: Path
    manifest: Manifest
    seconds: float

    @property
    def figures(self) -> dict[str, Path]:
        """The build's pictures (kind → file), from the manifest's `metrics.figures`, whose paths are
        relative to the folder holding the repository."""
        home = self.directory.parent.parent
        return {kind: home / path for kind, path in self.manifest.metrics.get("figures", {}).items()}


def run_dir_for(repository: Path, name: str) -> Path:
    """Checkpoints, TensorBoard events and figures of a build: runs/<name>/ beside the repository."""
    return Path(repository).resolve().parent / "runs" / name


FIGURES = "figures"  # the folder of a build's pictures inside its run folder, redrawn by every build


def draw_figures(
    task, folder: Path, history: list[dict[str, Any]], outputs: Any, targets: Any, splits, metrics: dict
) -> dict[str, Path]:
    """Redraw a build's pictures in `folder`: the training curves, then the task's own (`Task.figures`)
    of the PyTorch model on the test split. A picture that cannot be drawn is reported and skipped:
    the model is the product, the pictures describe it."""
    from training import figures

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    drawn: dict[str, Path] = {}
    try:
        curves = figures.training_curves(
            folder / "curves.png", history, task.metric, title=f"{task.recipe.name}: fine-tuning"
        )
        if curves is not None:
            drawn["curves"] = curves
        drawn |= task.figures(folder, outputs, targets, splits, metrics)
    except Exception as exc:  # see the docstring
        log.warning(
            "%s: figures not drawn (%s: %s)", task.recipe.name, type(exc).__name__, exc, exc_info=True
        )
    for kind, path in drawn.items():
        log.debug("%s: figure %s: %s", task.recipe.name, kind, path)
    return drawn


def build_recipe(
    recipe: Recipe, repository: Path | None = None, quiet: bool = False, resume: bool = False
) -> BuildResult | None:
    """The whole pipeline for one recipe. Under `torchrun` every process trains (DDP) and only rank 0
    evaluates, exports and writes the repository; the other ranks return None after training.

    Progress goes to `logging` (the `tuneserve` command shows it); `quiet` turns off the progress bars
    and the summary, and lowers the messages to warnings and errors."""
    with quieted(quiet or not is_main_process()):
        return _build_recipe(recipe, repository, quiet, resume)


def _build_recipe(recipe: Recipe, repository: Path | None, quiet: bool, resume: bool) -> BuildResult | None:
    repository = Path(repository) if repository is not None else Settings().repository
    started = time.perf_counter()
    distributed = init_distributed()
    if recipe.prune is not None:
        from training.prune import resolve_method

        resolve_method(recipe.prune, recipe.backbone)  # an unsupported method fails before training
        if distributed:
            raise ValueError("pruning's recovery fine-tune runs in one process: build without torchrun")
    quiet = quiet or not is_main_process()
    seed_everything(recipe.train.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    backbone = get_backbone(recipe.backbone)
    task = get_task(recipe.task)(recipe, backbone)
    task.progress = not quiet

    log.info("%s: loading data (%s)", recipe.name, recipe.data.source)
    if distributed and not is_main_process():
        torch.distributed.barrier()  # rank 0 generates and caches any built-in data first
    splits = task.load_data()
    if distributed and is_main_process():
        torch.distributed.barrier()
    log.info(
        "%s: %d train / %d val / %d test, %d labels",
        recipe.name,
        len(splits.train),
        len(splits.val),
        len(splits.test),
        len(splits.label_names),
    )

    model = task.build_model(splits.label_names)
    task.prepare(model, splits)
    run_dir = run_dir_for(repository, recipe.name)
    if recipe.train.epochs > 0:
        log.info(
            "%s: fine-tuning %s (%.1fM parameters)", recipe.name, backbone.name, count_parameters(model) / 1e6
        )
        fitted = fit(
            model,
            task,
            splits,
            recipe.train,
            progress=not quiet,
            run_dir=run_dir,
            resume=resume,
        )
        if not is_main_process():
            return None
    else:
        log.info("%s: exporting the pretrained %s as is (epochs: 0)", recipe.name, backbone.name)
        model.eval()
        fitted = FitResult(best_metric=float("nan"), best_epoch=0, steps=0)
    if recipe.prune is not None:
        # before after_fit, so calibration and backtests describe the model that ships
        from training.prune import prune_and_recover

        pruning = prune_and_recover(model, task, splits, recipe.prune, progress=not quiet)
        model = pruning.model
        task.report["pruning"] = pruning.report
        log.info("%s: %s", recipe.name, pruning.summary)
    task.after_fit(model, splits)

    val_batches = list(task.loader(splits.val, shuffle=False, batch_size=64))
    val = EvalSplit(val_batches, task.collect_targets([t for _, t in val_batches]))
    test_batches = list(task.loader(splits.test, shuffle=False, batch_size=64))
    reference, test_targets = torch_outputs(model, task, test_batches)
    test = EvalSplit(test_batches, test_targets)
    torch_metrics = task.metrics(reference, test.targets, splits.label_names)
    log.info("%s: PyTorch test %s = %.4f", recipe.name, task.metric, torch_metrics[task.metric])
    # drawn before the export and the gates, so a build that fails them still leaves its pictures
    drawn = draw_figures(
        task, run_dir / FIGURES, fitted.history, reference, test.targets, splits, torch_metrics
    )

    repository.mkdir(parents=True, exist_ok=True)
    staging = repository / f".{recipe.name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        example = task.example_inputs(splits.val)
        dynamo = recipe.export.exporter == "dynamo"
        log.info("%s: exporting ONNX (%s exporter) and TorchScript", recipe.name, recipe.export.exporter)
        export_onnx(model, task, example, staging / "model.onnx", recipe.export.opset, dynamo=dynamo)
        export_torchscript(model, example, staging / "model.ts")
        for file in ("model.onnx", "model.ts"):
            log.debug("%s: %s, %.2f MB", recipe.name, file, (staging / file).stat().st_size / 1e6)
        parity_report = check_parity(
            task,
            reference,
            test.batches,
            staging / "model.onnx",
            staging / "model.ts",
            recipe.export.parity_atol,
        )
        log.info(
            "%s: parity ok (ONNX max |Δ| %.1e, TorchScript %.1e)",
            recipe.name,
            parity_report["onnx"]["max_abs_diff"],
            parity_report["torchscript"]["max_abs_diff"],
        )
        program = export_and_check_program(
            model, task, example, staging / "model.pt2", reference, test.batches, recipe.export.parity_atol
        )
        if program["file"] is None:
            log.warning("%s: no model.pt2 (ExportedProgram): %s", recipe.name, program["problem"])
        else:
            log.info("%s: ExportedProgram model.pt2 parity ok", recipe.name)
        exports = {
            "onnx": {
                "file": "model.onnx",
                "exporter": f"torch.onnx.export ({'dynamo=True' if dynamo else 'TorchScript-based, dynamo=False'})",
            },
            "torchscript": {"file": "model.ts", "exporter": "torch.jit.trace"},
            "exported_program": {"exporter": "torch.export.export", **program},
        }

        fp32 = onnx_runner(staging / "model.onnx")
        fp32_outputs = run_batches(fp32, task, test.batches)
        fp32_metrics = task.metrics(fp32_outputs, test.targets, splits.label_names)
        validation = {
            "fp32": _scalars(
                task.metrics(run_batches(fp32, task, val.batches), val.targets, splits.label_names)
            )
        }
        variants = {
            "fp32": Variant(
                file="model.onnx",
                precision="fp32",
                metrics=_scalars(fp32_metrics),
                parity=parity_report["onnx"],
            )
        }
        default: dict[Device, str] = {"cpu": "fp32", "gpu": "fp32"}
        reason = "fp32 on CPU: quantisation disabled in the recipe"
        if recipe.quantise.mode != "none":
            int8, validation["int8"], reason = quantise_and_gate(
                task,
                recipe,
                splits,
                staging,
                val,
                test,
                reference,
                variants["fp32"],
                validation["fp32"],
            )
            variants["int8"] = int8
            if int8.parity["gate_passed"]:
                default["cpu"] = "int8"
            log.info("%s: %s", recipe.name, reason)
        gpu_reason = "fp32 on GPU: fp16 disabled in the recipe"
        if recipe.export.fp16:
            log.info("%s: converting to fp16 and checking it against fp32", recipe.name)
            variants["fp16"], gpu_reason = fp16_variant(
                task,
                staging,
                test.batches,
                test.targets,
                splits.label_names,
                fp32_outputs,
                fp32_metrics[task.metric],
                recipe.export.fp16_rtol or task.fp16_rtol,
            )
            if variants["fp16"].parity["gate_passed"]:
                default["gpu"] = "fp16"
            log.info("%s: %s", recipe.name, gpu_reason)
        reason += "; " + gpu_reason

        # A release gate, not a choice between models: the served variant must reach the floor on test.
        served_metric = variants[default["cpu"]].metrics[task.metric]
        if served_metric < recipe.gates.min_test_metric:
            raise GateError(
                f"{recipe.name}: served variant {default['cpu']} has test {task.metric} {served_metric:.4f} < gate {recipe.gates.min_test_metric}"
            )

        for name, source in task.assets().items():
            shutil.copyfile(source, staging / name)
        task.add_files(staging, splits)
        manifest = Manifest(
            name=recipe.name,
            version=recipe.version,
            task=task.name,
            modality=task.modality,
            base_model=backbone.base_model,
            recipe=recipe.model_dump(mode="json"),
            labels=splits.label_names,
            signature=onnx_signature(staging / "model.onnx"),
            preprocessing=task.preprocessing_config(),
            variants=variants,
            default_variant=default,
            default_reason=reason,
            metrics={
                "decisive": task.metric,
                "pytorch_test": torch_metrics,
                "best_val": fitted.best_metric,
                "best_epoch": fitted.best_epoch,
                "history": fitted.history,
                # every variant's validation metrics: what the INT8 gate and the backbone comparison decided on
                "validation": validation,
                # pictures of the build, relative to the folder holding the repository (runs/<name>/figures/)
                "figures": {
                    kind: path.relative_to(repository.resolve().parent).as_posix()
                    for kind, path in drawn.items()
                },
                **task.report,
                **{f"test_{k}": v for k, v in _scalars(variants[default["cpu"]].metrics).items()},
            },
            build={**_build_info(started, fitted.steps, len(splits.train)), "exports": exports},
        )
        write_manifest(staging, manifest)
        target = repository / recipe.name
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result = BuildResult(target, manifest, time.perf_counter() - started)
    if not quiet:
        print(summary(result))
    return result


def build(
    recipe: Recipe, repository: Path | None = None, quiet: bool = False, resume: bool = False
) -> BuildResult | None:
    """Build a recipe; with `compare_backbones`, build every candidate and keep the one with the best
    served validation metric per millisecond (CPU, batch 8), recording the comparison (and each
    candidate's test metric, reported only) in its manifest; the winner's figures become the build's."""
    repository = Path(repository) if repository is not None else Settings().repository
    if not recipe.compare_backbones:
        return build_recipe(recipe, repository, quiet, resume)
    repository.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    built: dict[str, BuildResult] = {}
    with (
        quieted(quiet or not is_main_process()),
        tempfile.TemporaryDirectory(dir=repository, prefix=f".{recipe.name}.candidates.") as tmp,
    ):
        for name in [recipe.backbone, *recipe.compare_backbones]:
            log.info("%s: candidate backbone %s", recipe.name, name)
            candidate = recipe.with_overrides({"backbone": name, "compare_backbones": []})
            try:
                # a repository of its own, so each candidate has its own run folder (checkpoints,
                # figures), at the same place relative to it as the build's run folder
                result = build_recipe(candidate, Path(tmp) / name / "repository", quiet)
            except GateError as exc:
                rows.append({"backbone": name, "passed_gate": False, "why": str(exc)})
                continue
            if result is None:  # a DDP rank other than 0: trained its share, rank 0 compares
                continue
            m = result.manifest
            metric, variant = m.metrics["decisive"], m.default_variant["cpu"]
            ms = m.variants[variant].speed.get("ms_per_batch8", float("nan")) / 8
            value = m.metrics["validation"][variant][metric]
            rows.append(
                {
                    "backbone": name,
                    "passed_gate": True,
                    "variant": variant,
                    f"val_{metric}": value,
                    f"test_{metric}": m.variants[variant].metrics[metric],
                    "ms_per_item": ms,
                    "metric_per_ms": value / ms,
                }
            )
            built[name] = result
        if not is_main_process():
            return None
        if not built:
            raise GateError(f"{recipe.name}: no candidate backbone passed the gates: {rows}")
        best = max((r for r in rows if r["passed_gate"]), key=lambda r: r["metric_per_ms"])
        result = built[best["backbone"]]
        m = result.manifest
        m.metrics["candidates"] = rows
        m.default_reason += f"; backbone {best['backbone']}: best validation {m.metrics['decisive']} per ms of {len(rows)} candidates"
        write_manifest(result.directory, m)
        target = repository / recipe.name
        shutil.rmtree(target, ignore_errors=True)
        result.directory.rename(target)
        figures = run_dir_for(repository, recipe.name) / FIGURES
        shutil.rmtree(figures, ignore_errors=True)
        winner = run_dir_for(result.directory.parent, recipe.name) / FIGURES
        if winner.is_dir():
            figures.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(winner, figures)
    result = BuildResult(target, m, time.perf_counter() - started)  # every candidate's build
    if not quiet:
        print(summary(result))
        print(
            "  candidates: "
            + "; ".join(
                f"{r['backbone']}: "
                + (
                    f"val {r['val_' + m.metrics['decisive']]:.4f} at {r['ms_per_item']:.2f} ms"
                    if r["passed_gate"]
                    else "failed gate"
                )
                for r in rows
            )
        )
    return result


def quantise_and_gate(
    task,
    recipe: Recipe,
    splits,
    staging: Path,
    val: EvalSplit,
    test: EvalSplit,
    reference,
    fp32: Variant,
    fp32_val: dict[str, float],
) -> tuple[Variant, dict[str, float], str]:
    """Write model.int8.onnx; return its Variant (test metrics; gate result in parity["gate_passed"]),
    its validation metrics, and why the CPU serves what it serves. Gates, decided on validation:
    metric drop vs fp32 (`fp32_val`) ≤ max_metric_drop, and (if asked) faster than fp32. The test
    drop is recorded beside it and decides nothing."""
    q = recipe.quantise
    fp32_path, int8_path = staging / "model.onnx", staging / "model.int8.onnx"
    if q.mode == "dynamic":
        log.info("%s: quantising to dynamic INT8", recipe.name)
        quantise_dynamic_int8(fp32_path, int8_path)
    else:
        log.info(
            "%s: quantising to static INT8 (QDQ, per-channel), calibrating on %d training inputs",
            recipe.name,
            q.calibration_size,
        )
        quantise_static_int8(
            fp32_path,
            int8_path,
            task.calibration_inputs(splits, q.calibration_size),
            symbolic_shapes=task.quantise_symbolic_shapes,
            op_types=task.quantise_op_types,
            float_outputs=task.quantise_float_outputs,
            float_layers=q.float_layers,
            calibration_method=q.calibration_method,
            quantise_activation_products=task.quantise_activation_products,
        )
    int8 = onnx_runner(int8_path)
    val_metrics = _scalars(
        task.metrics(run_batches(int8, task, val.batches), val.targets, splits.label_names)
    )
    int8_outputs = run_batches(int8, task, test.batches)
    metrics = task.metrics(int8_outputs, test.targets, splits.label_names)
    drop = fp32_val[task.metric] - val_metrics[task.metric]
    feeds = {k: v[:8].numpy() for k, v in val.batches[0][0].items()}
    threads = max(1, torch.get_num_threads())
    fp32.speed = {"ms_per_batch8": time_session(fp32_path, feeds, threads)}
    speed = {"ms_per_batch8": time_session(int8_path, feeds, threads)}
    speedup = fp32.speed["ms_per_batch8"] / speed["ms_per_batch8"]
    accurate = drop <= q.max_metric_drop
    fast = speedup >= MIN_SPEEDUP or not q.require_speedup
    passed = accurate and fast
    gate = f"validation {task.metric} drop {drop * 100:.2f} points (limit {q.max_metric_drop * 100:.2f}), {speedup:.2f}× fp32 speed at batch 8"
    reason = (
        f"int8 on CPU: {gate}"
        if passed
        else f"fp32 on CPU: int8 {'not faster' if accurate else 'not accurate enough'} ({gate}); int8 kept but not served"
    )
    variant = Variant(
        file=int8_path.name,
        precision="int8",
        metrics=_scalars(metrics),
        parity={
            "max_abs_diff_vs_fp32": max_abs_diff(reference, int8_outputs),
            "val_metric_drop": float(drop),
            "metric_drop": float(fp32.metrics[task.metric] - metrics[task.metric]),
            "speedup_vs_fp32": float(speedup),
            "gate_passed": passed,
        },
        speed=speed,
        note=f"{q.mode} quantisation",
    )
    return variant, val_metrics, reason


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _build_info(started: float, steps: int, train_size: int) -> dict[str, Any]:
    return {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "steps": steps,
        "train_examples": train_size,
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        # the INT8 gate's speed was measured on this CPU class (serving.sessions.cpu_int8_products)
        "int8_products": cpu_int8_products(),
    }


def summary(result: BuildResult) -> str:
    """The one-screen table printed at the end of a build."""
    m = result.manifest
    keys = [k for k in next(iter(m.variants.values())).metrics if k != "n"]
    lines = [f"\n{m.name} v{m.version} → {result.directory}  ({result.seconds:.0f} s)"]
    lines.append(f"  {'variant':8} {'file':18} {'MB':>7} " + " ".join(f"{k:>10}" for k in keys))
    for name, v in m.variants.items():
        size = m.files[v.file].bytes / 1e6
        lines.append(
            f"  {name:8} {v.file:18} {size:7.1f} "
            + " ".join(f"{v.metrics.get(k, float('nan')):10.4f}" for k in keys)
        )
    lines.append(
        f"  served: CPU={m.default_variant['cpu']} GPU={m.default_variant['gpu']} — {m.default_reason}"
    )
    figures = result.figures
    if figures:
        folder = next(iter(figures.values())).parent
        lines.append(f"  figures in {folder}: " + ", ".join(p.name for p in figures.values()))
    return "\n".join(lines)
