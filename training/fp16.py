"""The FP16 variant, for GPUs: the fp32 ONNX graph converted to float16 and checked against fp32.

The conversion is ONNX Runtime's own (`onnxruntime.transformers.float16`, its maintained copy of
onnxconverter-common's converter), so it needs no package beyond onnxruntime and onnx. Inputs and
outputs stay float32 (`keep_io_types`): the server feeds and reads every variant the same way.

The check runs on ONNX Runtime's CPU provider, the one every build machine has. That provider has
float16 kernels for few operators: it inserts casts and computes the others in float32. So the
build measures what storing weights and activations in float16 changes (and catches constants
clamped to float16's range, such as attention-mask fills); float16 arithmetic itself is checked on
a GPU by benchmarks/gpu_check.sh. The variant's `note` says so."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from serving.manifest import Variant
from training.evaluate import run_batches
from training.export import onnx_runner

log = logging.getLogger(__name__)

FP16_FILE = "model.fp16.onnx"
CHECKED_ON = (
    "float16 graph, float32 inputs and outputs; parity checked on ONNX Runtime's CPU provider, "
    "which computes most float16 operators in float32 (float16 storage is checked, float16 "
    "arithmetic is checked on a GPU by benchmarks/gpu_check.sh)"
)


def convert_fp16(fp32_path: Path, out_path: Path) -> Path:
    """Write the float16 graph of `fp32_path` to `out_path`, its inputs and outputs kept float32.
    Constants beyond float16's range are clamped to it (±65504); the parity check tells whether
    that mattered."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    _drop_repeated_nodes(half.graph)
    onnx.save(half, str(out_path))
    return Path(out_path)


def _drop_repeated_nodes(graph: Any) -> None:
    """The converter keeps some inputs float32 (Resize's scales) and casts them back once per
    consumer, under one name: a constant shared by several Resize nodes (torch.export shares them)
    gets identical Cast nodes, which ONNX Runtime refuses. The first of identical nodes comes before
    every consumer, so the others are dropped."""
    seen: set[bytes] = set()
    kept = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            kept.append(node)
    if len(kept) < len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def fp16_gate(
    task: Any, fp32_outputs: Any, fp16_outputs: Any, fp32_metric: float, fp16_metric: float, rtol: float
) -> tuple[dict[str, float | bool], str | None]:
    """The fp16 variant's `parity` and why it fails (None: it passes). Outputs are compared with
    fp32's on the same inputs the task's way (`Task.parity`): within `rtol` times the largest fp32
    output (at least 1) and, for classifiers, the same argmax for every input; a NaN anywhere fails.
    The change of the deciding metric is recorded and decides nothing."""
    scale = max(1.0, float(np.abs(fp32_outputs).max())) if isinstance(fp32_outputs, np.ndarray) else 1.0
    limit = rtol * scale
    compared = task.parity(fp32_outputs, fp16_outputs)
    if "argmax_equal" in compared and np.ndim(fp32_outputs) == 2:  # one row of scores per input
        agree = np.argmax(fp32_outputs, -1) == np.argmax(fp16_outputs, -1)
        compared["argmax_agreement"] = float(agree.mean())  # how many labels, when not all, are the same
    problems = [f"{k} is {v}" for k, v in compared.items() if isinstance(v, float) and not math.isfinite(v)]
    problem = task.parity_problem(compared, limit)
    if problem is not None and "argmax_agreement" in compared:
        problem += f" (for {1 - compared['argmax_agreement']:.2%} of the inputs)" * ("argmax" in problem)
    if problem is not None:
        problems.append(problem)
    parity: dict[str, float | bool] = {f"{k}_vs_fp32": v for k, v in compared.items()}
    parity |= {
        "rtol": rtol,
        "limit": limit,
        "metric_drop": float(fp32_metric - fp16_metric),
        "gate_passed": not problems,
    }
    return parity, ", ".join(problems) or None


def fp16_variant(
    task: Any,
    staging: Path,
    batches: list,
    targets: Any,
    label_names: list[str],
    fp32_outputs: Any,
    fp32_metric: float,
    rtol: float,
) -> tuple[Variant, str]:
    """Write `staging`/model.fp16.onnx from `staging`/model.onnx and check it on the test `batches`
    against fp32's `fp32_outputs` there. Returns the Variant (`parity["gate_passed"]` decides whether
    GPUs serve it) and the reason for the GPU's choice. A graph the CPU provider cannot run is kept,
    unchecked and not served by default, with the error in the reason."""
    path = convert_fp16(staging / "model.onnx", staging / FP16_FILE)
    try:
        outputs = run_batches(onnx_runner(path), task, batches)
    except Exception as exc:  # e.g. an operator the CPU provider has no float16 kernel or cast for
        why = f"{type(exc).__name__}: {str(exc)[:200]}"
        log.warning("%s: fp16 variant not checked: %s", task.recipe.name, why)
        unchecked = Variant(
            file=FP16_FILE,
            precision="fp16",
            parity={"gate_passed": False},
            note=f"float16 graph, not checked: ONNX Runtime's CPU provider cannot run it ({why})",
        )
        return unchecked, f"fp32 on GPU: fp16 could not be checked on the CPU ({why})"
    metrics = {
        k: float(v)
        for k, v in task.metrics(outputs, targets, label_names).items()
        if isinstance(v, (int, float))
    }
    parity, problem = fp16_gate(task, fp32_outputs, outputs, fp32_metric, metrics[task.metric], rtol)
    limit = f"limit {parity['limit']:.2e}: {rtol * 100:g}% of the largest fp32 output"
    variant = Variant(file=FP16_FILE, precision="fp16", metrics=metrics, parity=parity, note=CHECKED_ON)
    if problem is not None:
        return variant, f"fp32 on GPU: fp16 differs from fp32 on test ({problem}; {limit})"
    return variant, f"fp16 on GPU: vs fp32 on test {_shown(parity)} ({limit})"


def _shown(parity: dict[str, float | bool]) -> str:
    """The comparison in a reason: `max |Δ| 3.1e-03, argmax equal, min cosine 0.999998`."""
    names = {"max_abs_diff": "max |Δ|", "argmax_equal": "argmax equal", "min_cosine": "min cosine"}
    shown = []
    for key, value in parity.items():
        name = key.removesuffix("_vs_fp32")
        if name not in names:  # argmax_agreement: 1 when the argmax is equal, said in failures
            continue
        if isinstance(value, bool):
            shown.append(names.get(name, name) if value else f"not {names.get(name, name)}")
        else:
            shown.append(
                f"{names.get(name, name)} {value:.6f}"
                if name == "min_cosine"
                else f"{names.get(name, name)} {value:.1e}"
            )
    return ", ".join(shown)
