"""Post-training quantisation with ONNX Runtime's tools."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process


def quantise_dynamic_int8(fp32_path: Path, out_path: Path) -> Path:
    """Dynamic INT8: weights quantised offline, activations per call. Pre-processing (shape inference
    and graph optimisation) first, as ONNX Runtime recommends; its symbolic shape pass cannot follow
    the dynamic sequence axis of a BERT graph, so only ONNX shape inference runs."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_dynamic(str(prepared), str(out_path), weight_type=QuantType.QInt8, per_channel=False)
        finally:
            logging.getLogger().setLevel(quiet)
    return out_path


class _Calibration(CalibrationDataReader):
    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantise_static_int8(fp32_path: Path, out_path: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """Static INT8 in QDQ format, per-channel weights, activation ranges from calibration inputs
    (MinMax over what the server would feed). Pre-processing first, as for dynamic."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
            quantize_static(
                str(prepared),
                str(out_path),
                _Calibration(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        finally:
            logging.getLogger().setLevel(quiet)
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
