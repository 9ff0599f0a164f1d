"""Export to ONNX (fp32, dynamic axes) and TorchScript (traced), then check both against PyTorch the task's way."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from serving.sessions import create_session
from training.evaluate import run_batches
from training.tasks.base import Batch, Task


class ParityError(RuntimeError):
    pass


def export_onnx(
    model: nn.Module, task: Task, example: dict[str, torch.Tensor], path: Path, opset: int
) -> Path:
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


def check_parity(
    task: Task, reference: Any, batches: Iterable[Batch], onnx_path: Path, ts_path: Path, atol: float
) -> dict[str, Any]:
    """ONNX and TorchScript outputs vs PyTorch's (`reference`) over the same batches, compared the
    task's way (`Task.parity`); raises ParityError when the task finds a difference too large."""
    batches = list(batches)
    report: dict[str, Any] = {
        "onnx": task.parity(reference, run_batches(onnx_runner(onnx_path), task, batches)),
        "torchscript": task.parity(reference, run_batches(torchscript_runner(ts_path), task, batches)),
        "atol": atol,
    }
    for engine in ("onnx", "torchscript"):
        problem = task.parity_problem(report[engine], atol)
        if problem is not None:
            raise ParityError(f"{engine} output differs from PyTorch: {problem}")
    return report
