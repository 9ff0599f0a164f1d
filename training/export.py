"""Export to ONNX (fp32, dynamic axes) and TorchScript (traced), then check both against PyTorch the task's way."""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from serving.sessions import create_session
from training.evaluate import run_batches
from training.tasks.base import Batch, Task


class ParityError(RuntimeError):
    pass


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    """Tracers read every attribute of the modules they walk. On a transformers model that includes
    `loss_function`, whose getter logs a warning about a loss the export never uses: silenced, along
    with the tracers' own warnings (python control flow in transformers)."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _padded_conv(conv: nn.Conv2d, pad: tuple[int, int, int, int], x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(x, pad), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


@contextlib.contextmanager
def static_same_padding(model: nn.Module, example: dict[str, torch.Tensor]) -> Iterator[None]:
    """timm's TF-"same" convolutions (Conv2dSame, in tf_efficientnet_*) work out their padding from
    the input's size on every call, so a traced graph carries that arithmetic as float tensor ops
    (Shape, Ceil, Sub, Mul, Concat). Static INT8 calibrates and quantises those numbers like
    activations and then pads by the wrong amounts. The exported inputs have a fixed spatial size
    (only the batch axis is dynamic), so while exporting each such convolution pads by the constant
    amounts its input size gives; the module is restored afterwards."""
    try:
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.padding import pad_same_arg
    except ImportError:  # no timm model, nothing to freeze
        yield
        return
    convs = [m for m in model.modules() if isinstance(m, Conv2dSame)]
    if not convs:
        yield
        return
    sizes: dict[nn.Module, list[int]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(mod, list(args[0].shape[-2:])))
        for m in convs
    ]
    try:
        with torch.no_grad():
            model(*example.values())
    finally:
        for hook in hooks:
            hook.remove()
    for m in convs:
        left, right, top, bottom = (
            int(p)
            for p in pad_same_arg(sizes[m], list(m.weight.shape[-2:]), list(m.stride), list(m.dilation))
        )
        m.forward = functools.partial(_padded_conv, m, (left, right, top, bottom))  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m in convs:
            del m.forward


def export_onnx(
    model: nn.Module,
    task: Task,
    example: dict[str, torch.Tensor],
    path: Path,
    opset: int,
    dynamo: bool = False,
) -> Path:
    """fp32 ONNX with the task's dynamic axes, by torch.onnx's TorchScript-based exporter or, with
    `dynamo` (the recipe's `export.exporter: dynamo`), by torch.export's (opset 18 at least);
    benchmarks/engines.py compares them."""
    model.eval()
    with quiet_tracing(), torch.no_grad(), static_same_padding(model, example):
        torch.onnx.export(
            model,
            tuple(example.values()),
            str(path),
            input_names=task.input_names,
            output_names=task.output_names,
            dynamic_axes=task.dynamic_axes,
            opset_version=max(opset, 18) if dynamo else opset,
            do_constant_folding=True,
            dynamo=dynamo,
            verbose=False,
            external_data=False,  # one file, as the repository lists it (the models are far below 2 GB)
        )
    return path


def export_torchscript(model: nn.Module, example: dict[str, torch.Tensor], path: Path) -> Path:
    model.eval()
    with quiet_tracing(), torch.no_grad(), static_same_padding(model, example):
        traced = torch.jit.trace(model, tuple(example.values()), check_trace=False)
    traced.save(str(path))
    return path


def export_program(model: nn.Module, task: Task, example: dict[str, torch.Tensor], path: Path) -> Path:
    """torch.export's ExportedProgram (`.pt2`, load with `torch.export.load(path).module()`): the
    task's dynamic ONNX axes are dynamic dimensions here too (`Dim.AUTO`: a dimension the model
    fixes is kept static, and the parity check over other batch sizes then says so)."""
    from torch.export import Dim

    model.eval()
    tensors = tuple(example.values())
    if tensors[0].shape[0] < 2:  # a batch of one would be specialised to one
        tensors = tuple(torch.cat([t, t]) for t in tensors)
    shapes = tuple({axis: Dim.AUTO for axis in task.dynamic_axes.get(name, {})} for name in task.input_names)
    with quiet_tracing(), torch.no_grad(), static_same_padding(model, example):
        program = torch.export.export(model, tensors, dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


def onnx_runner(path: Path, threads: int = 0):
    session, _ = create_session(path, threads or torch.get_num_threads(), ["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda feeds: session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def torchscript_runner(path: Path):
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream, but the repository ships it for torch users, so
        # checking what it ships is intended use
        warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning)
        module = torch.jit.load(str(path))
    module.eval()
    return _numpy_runner(module)


def program_runner(path: Path):
    return _numpy_runner(torch.export.load(str(path)).module())


def _numpy_runner(module):
    """numpy feeds (in input order) → the module's output as numpy, without gradients."""

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return module(*(torch.from_numpy(v) for v in feeds.values())).numpy()

    return run


def check_program(
    task: Task, reference: Any, batches: Iterable[Batch], path: Path, atol: float
) -> dict[str, Any]:
    """The ExportedProgram's outputs vs PyTorch's, the task's way: its parity report, with `problem`
    set when it fails (including a program that cannot run the batches, e.g. a dimension the export
    fixed)."""
    try:
        report = task.parity(reference, run_batches(program_runner(path), task, list(batches)))
    except Exception as exc:  # any failure to run is a parity failure, reported
        return {"problem": f"cannot run the test batches: {first_line(exc)}"}
    problem = task.parity_problem(report, atol)
    return report if problem is None else {**report, "problem": f"output differs from PyTorch: {problem}"}


def first_line(exc: BaseException) -> str:
    """An exception as one short line for a manifest or a report: its type and first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def export_and_check_program(
    model: nn.Module,
    task: Task,
    example: dict[str, torch.Tensor],
    path: Path,
    reference: Any,
    batches: Iterable[Batch],
    atol: float,
) -> dict[str, Any]:
    """Write `path` and check it; a model torch.export cannot take, or whose program fails parity,
    ships without it (the file is removed) and the report says why: the ONNX and TorchScript files
    are what the repository promises, the ExportedProgram is offered beside them."""
    try:
        export_program(model, task, example, path)
    except Exception as exc:  # recorded in the manifest, the build goes on
        return {"file": None, "problem": f"torch.export failed: {first_line(exc)}"}
    report = check_program(task, reference, batches, path, atol)
    if "problem" in report:
        path.unlink(missing_ok=True)
        return {"file": None, **report}
    return {"file": path.name, **report}


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
