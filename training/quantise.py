"""Post-training quantisation with ONNX Runtime's tools."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic
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
