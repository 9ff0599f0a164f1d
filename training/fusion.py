"""Transformer fusions for the text encoders' ONNX graphs (onnxruntime.transformers' optimizer).

The exporter writes a BERT-family encoder op by op: every LayerNorm as ReduceMean/Sub/Pow/..., every
GELU as Erf arithmetic, attention as MatMul/Softmax chains. ONNX Runtime has fused kernels for these
(SkipLayerNormalization, BiasGelu/FastGelu, EmbedLayerNormalization, Attention) that the session's
own graph optimiser does not apply to an exported graph; the transformers optimizer rewrites the
graph to use them, given the model's head count and hidden size.

Two candidates: every fusion, and every fusion except Attention (static INT8 quantises MatMuls, and
a fused Attention node keeps its input projection inside itself). benchmarks/transformer_fusion.py
measures both against the exported graph, fp32 and INT8; the build does not fuse, because there the
session's own optimiser already matches the fused graphs at batch 32 and the static quantiser cannot
calibrate them (the results page has the numbers and the error).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

CANDIDATES = ("all", "no-attention")


def fuse_transformer(
    source: Path, target: Path, num_heads: int, hidden_size: int, kind: str
) -> dict[str, int]:
    """Write the fused graph of `source` to `target`; returns how many of each fused operator it has."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if kind not in CANDIDATES:
        raise ValueError(f"fusion {kind!r}: one of {', '.join(CANDIDATES)}")
    options = FusionOptions("bert")
    options.enable_attention = kind == "all"
    # opt_level 0: only the optimizer's own fusions; the session applies ONNX Runtime's graph
    # optimisations when it opens the file, as it does for every other model
    model = optimize_model(
        str(source),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        optimization_options=options,
        opt_level=0,
        use_gpu=False,
    )
    model.save_model_to_file(str(target))
    return {name: count for name, count in model.get_fused_operator_statistics().items() if count}
