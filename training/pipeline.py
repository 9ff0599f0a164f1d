"""recipe → data → fine-tune → evaluate → export ONNX + TorchScript → parity → quantise → gate → exported/<name>/"""

from __future__ import annotations

import datetime as dt
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime
import torch

from serving.manifest import Manifest, Signature, TensorSpec, Variant, write_manifest
from serving.settings import PROJECT_ROOT
from training.backbones import count_parameters, get_backbone
from training.evaluate import run_batches, torch_logits
from training.export import check_parity, export_onnx, export_torchscript, onnx_runner
from training.loop import fit, seed_everything
from training.quantise import quantise_dynamic_int8
from training.recipe import Recipe
from training.tasks import get_task

DEFAULT_REPOSITORY = PROJECT_ROOT / "exported"


class GateError(RuntimeError):
    pass


@dataclass
class BuildResult:
    directory: Path
    manifest: Manifest
    seconds: float


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[tuneserve] {msg}", flush=True)


def _signature(task, model_dir: Path, onnx_file: str) -> Signature:
    import onnx

    graph = onnx.load(str(model_dir / onnx_file), load_external_data=False).graph

    def spec(value) -> TensorSpec:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        return TensorSpec(name=value.name, dtype=dtype, shape=dims)

    return Signature(inputs=[spec(v) for v in graph.input], outputs=[spec(v) for v in graph.output])


def build_recipe(recipe: Recipe, repository: Path = DEFAULT_REPOSITORY, quiet: bool = False) -> BuildResult:
    started = time.perf_counter()
    seed_everything(recipe.train.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    backbone = get_backbone(recipe.backbone)
    task = get_task(recipe.task)(recipe, backbone)

    _log(f"{recipe.name}: loading data ({recipe.data.source})", quiet)
    splits = task.load_data()
    _log(f"{recipe.name}: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test, {len(splits.label_names)} labels", quiet)

    model = task.build_model(splits.label_names)
    _log(f"{recipe.name}: fine-tuning {backbone.name} ({count_parameters(model) / 1e6:.1f}M parameters)", quiet)
    fitted = fit(model, task, splits, recipe.train, progress=not quiet)

    test_batches = list(task.loader(splits.test, shuffle=False, batch_size=64))
    reference, targets = torch_logits(model, test_batches)
    torch_metrics = task.metrics(reference, targets, splits.label_names)
    _log(f"{recipe.name}: PyTorch test {task.metric} = {torch_metrics[task.metric]:.4f}", quiet)

    repository.mkdir(parents=True, exist_ok=True)
    staging = repository / f".{recipe.name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        example = task.example_inputs(splits.val)
        _log(f"{recipe.name}: exporting ONNX (opset {recipe.export.opset}) and TorchScript", quiet)
        export_onnx(model, task, example, staging / "model.onnx", recipe.export.opset)
        export_torchscript(model, example, staging / "model.ts")
        parity_report = check_parity(reference, test_batches, staging / "model.onnx", staging / "model.ts", recipe.export.parity_atol)
        _log(f"{recipe.name}: parity ok (ONNX max |Δ| {parity_report['onnx']['max_abs_diff']:.1e}, TorchScript {parity_report['torchscript']['max_abs_diff']:.1e})", quiet)

        fp32_metrics = task.metrics(run_batches(onnx_runner(staging / "model.onnx"), test_batches), targets, splits.label_names)
        variants = {"fp32": Variant(file="model.onnx", precision="fp32", metrics=_scalars(fp32_metrics), parity=parity_report["onnx"])}
        default = {"cpu": "fp32", "gpu": "fp32"}
        reason = "fp32: quantisation disabled in the recipe"
        if recipe.quantise.mode == "dynamic":
            _log(f"{recipe.name}: quantising to dynamic INT8", quiet)
            quantise_dynamic_int8(staging / "model.onnx", staging / "model.int8.onnx")
            int8_logits = run_batches(onnx_runner(staging / "model.int8.onnx"), test_batches)
            int8_metrics = task.metrics(int8_logits, targets, splits.label_names)
            drop = fp32_metrics[task.metric] - int8_metrics[task.metric]
            passed = drop <= recipe.quantise.max_metric_drop
            variants["int8"] = Variant(
                file="model.int8.onnx",
                precision="int8",
                metrics=_scalars(int8_metrics),
                parity={"max_abs_diff_vs_fp32": float(abs(int8_logits - reference).max()), "metric_drop": float(drop), "gate_passed": passed},
            )
            if passed:
                default["cpu"] = "int8"
                reason = f"int8 on CPU: test {task.metric} drop {drop * 100:.2f} points ≤ {recipe.quantise.max_metric_drop * 100:.2f}; fp32 on GPU (INT8 MatMulInteger has no fast GPU kernel)"
            else:
                reason = f"fp32: int8 lost {drop * 100:.2f} points of test {task.metric} (gate {recipe.quantise.max_metric_drop * 100:.2f}); int8 kept but not served"
            _log(f"{recipe.name}: {reason}", quiet)

        served_metric = variants[default["cpu"]].metrics[task.metric]
        if served_metric < recipe.gates.min_test_metric:
            raise GateError(f"{recipe.name}: served variant {default['cpu']} has test {task.metric} {served_metric:.4f} < gate {recipe.gates.min_test_metric}")

        for name, source in task.assets().items():
            shutil.copyfile(source, staging / name)
        manifest = Manifest(
            name=recipe.name,
            version=recipe.version,
            task=task.name,
            modality=task.modality,
            base_model=backbone.base_model,
            recipe=recipe.model_dump(mode="json"),
            labels=splits.label_names,
            signature=_signature(task, staging, "model.onnx"),
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
                **{f"test_{k}": v for k, v in _scalars(variants[default["cpu"]].metrics).items()},
            },
            build=_build_info(started, fitted.steps, len(splits.train)),
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


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _build_info(started: float, steps: int, train_size: int) -> dict[str, Any]:
    return {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "steps": steps,
        "train_examples": train_size,
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def summary(result: BuildResult) -> str:
    """The one-screen table printed at the end of a build."""
    m = result.manifest
    keys = [k for k in next(iter(m.variants.values())).metrics if k != "n"]
    lines = [f"\n{m.name} v{m.version} → {result.directory}  ({result.seconds:.0f} s)"]
    lines.append(f"  {'variant':8} {'file':18} {'MB':>7} " + " ".join(f"{k:>10}" for k in keys))
    for name, v in m.variants.items():
        size = m.files[v.file].bytes / 1e6
        lines.append(f"  {name:8} {v.file:18} {size:7.1f} " + " ".join(f"{v.metrics.get(k, float('nan')):10.4f}" for k in keys))
    lines.append(f"  served: CPU={m.default_variant['cpu']} GPU={m.default_variant['gpu']} — {m.default_reason}")
    return "\n".join(lines)
