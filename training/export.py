"""Export to ONNX (fp32, dynamic axes) and TorchScript (traced), then check both against PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from serving.sessions import create_session
from training.evaluate import run_batches
from training.tasks.base import Batch, Task


class ParityError(RuntimeError):
    pass


def export_onnx(model: nn.Module, task: Task, example: dict[str, torch.Tensor], path: Path, opset: int) -> Path:
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow in transformers
        torch.onnx.export(
            model,
            tuple(example.values()),
            str(path),
            input_names=task.input_names,
            output_names=task.output_names,
            dynamic_axes=task.dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def export_torchscript(model: nn.Module, example: dict[str, torch.Tensor], path: Path) -> Path:
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, tuple(example.values()), check_trace=False)
    traced.save(str(path))
    return path


def onnx_runner(path: Path, threads: int = 0):
    session, _ = create_session(path, threads or torch.get_num_threads(), ["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda feeds: session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def torchscript_runner(path: Path):
    module = torch.jit.load(str(path))
    module.eval()

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return module(*(torch.from_numpy(v) for v in feeds.values())).numpy()

    return run


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "argmax_equal": bool((reference.argmax(-1) == candidate.argmax(-1)).all()),
    }


def check_parity(reference: np.ndarray, batches: Iterable[Batch], onnx_path: Path, ts_path: Path, atol: float) -> dict[str, Any]:
    """ONNX and TorchScript logits vs PyTorch's over the same batches; raises ParityError past `atol`."""
    batches = list(batches)
    report = {
        "onnx": parity(reference, run_batches(onnx_runner(onnx_path), batches)),
        "torchscript": parity(reference, run_batches(torchscript_runner(ts_path), batches)),
        "atol": atol,
    }
    for engine in ("onnx", "torchscript"):
        r = report[engine]
        if r["max_abs_diff"] > atol or not r["argmax_equal"]:
            raise ParityError(
                f"{engine} output differs from PyTorch: max |Δlogit| = {r['max_abs_diff']:.2e} "
                f"(limit {atol:.0e}), argmax identical: {r['argmax_equal']}"
            )
    return report


