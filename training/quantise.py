"""Post-training quantisation with ONNX Runtime's tools."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process


@contextlib.contextmanager
def _prepared(fp32_path: Path, symbolic_shapes: bool) -> Iterator[Path]:
    """ONNX Runtime's quantisation pre-processing (shape inference, graph optimisation) into a
    temporary file, with the quantiser's chatty root-logger warnings silenced meanwhile."""
    fp32_path = Path(fp32_path).resolve()
    # ONNX Runtime's tools drop debug files (e.g. sym_shape_infer_temp.onnx) into the working
    # directory when shape inference is incomplete: run them inside the temporary directory.
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        prepared = Path(tmp) / "prepared.onnx"
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=not symbolic_shapes)
            yield prepared
        finally:
            logging.getLogger().setLevel(level)


def quantise_dynamic_int8(fp32_path: Path, out_path: Path) -> Path:
    """Dynamic INT8: weights quantised offline, activations per call. The symbolic shape pass cannot
    follow the dynamic sequence axis of a BERT graph, so only ONNX shape inference runs.

    The activation range is taken over the whole input tensor of each call, so under the server's
    batching an input's answer depends on the other requests in its batch (tests/test_crosstalk.py
    would fail with it). The default recipes use static quantisation; this mode stays for offline use."""
    out_path = Path(out_path).resolve()
    with _prepared(fp32_path, symbolic_shapes=False) as prepared:
        quantize_dynamic(str(prepared), str(out_path), weight_type=QuantType.QInt8, per_channel=False)
    return out_path


SHAPE_SOURCES = {"Shape", "Size"}


def shape_arithmetic(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that only compute with tensor shapes: everything fed by Shape or Size and by
    constants alone (e.g. the padding a TF-"same" convolution works out from its input size, or a
    reshape target). Traced graphs often do that arithmetic in float, and static quantisation would
    then calibrate and round those numbers like activations: pads and reshapes by the wrong amounts.
    They are cheap scalars, so they stay in float."""
    constant = {i.name for i in model.graph.initializer}
    derived: set[str] = set()
    names = []
    for node in model.graph.node:  # ONNX keeps nodes in topological order
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant":
            constant.update(node.output)
        elif node.op_type in SHAPE_SOURCES or (
            any(i in derived for i in inputs) and all(i in derived or i in constant for i in inputs)
        ):
            derived.update(node.output)
            if node.name and node.op_type not in SHAPE_SOURCES:
                names.append(node.name)
    return names


class _Calibration(CalibrationDataReader):
    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantise_static_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: list[dict[str, np.ndarray]],
    symbolic_shapes: bool = True,
    op_types: list[str] | None = None,
    float_outputs: list[str] | None = None,
) -> Path:
    """Static INT8 in QDQ format, per-channel weights, activation ranges from calibration inputs
    (MinMax over what the server would feed). The ranges are fixed in the graph, so an input's
    answer does not depend on what else shares its batch (dynamic quantisation's per-call ranges
    do). `op_types` limits what is quantised (transformers: the matrix products and embeddings);
    the outputs of the `float_outputs` operator types stay float. Arithmetic on tensor shapes is never
    quantised (`shape_arithmetic`)."""
    out_path = Path(out_path).resolve()
    with _prepared(fp32_path, symbolic_shapes=symbolic_shapes) as prepared:
        excluded = shape_arithmetic(onnx.load(str(prepared), load_external_data=False))
        quantize_static(
            str(prepared),
            str(out_path),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=op_types,
            nodes_to_exclude=excluded,
            extra_options={"OpTypesToExcludeOutputQuantization": float_outputs} if float_outputs else None,
        )
    return out_path


def time_session(path: Path, feeds: dict[str, np.ndarray], threads: int, seconds: float = 2.0) -> float:
    """Mean milliseconds per call of an ONNX model on the CPU (after two warm-up calls)."""
    from serving.sessions import create_session

    session, _ = create_session(path, threads, ["CPUExecutionProvider"])
    session.run(None, feeds), session.run(None, feeds)
    n, start = 0, time.perf_counter()
    while n < 5 or time.perf_counter() - start < seconds:
        session.run(None, feeds)
        n += 1
    return (time.perf_counter() - start) / n * 1000
