"""What an ONNX file declares: its signature as the manifest lists it (torch-free)."""

from __future__ import annotations

from pathlib import Path

from serving.manifest import Signature, TensorSpec


def onnx_signature(path: Path) -> Signature:
    """The graph's inputs (not its initialisers, which older exporters list as inputs too) and outputs:
    name, numpy dtype name, and shape (a dimension's name where it is dynamic)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        kind = value.type.tensor_type
        dims: list[str | int] = [d.dim_param or d.dim_value for d in kind.shape.dim]
        # a dimension with neither a name nor a size is dynamic: named after its place
        dims = [d if d != 0 else f"{value.name}_{axis}" for axis, d in enumerate(dims)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name
        return TensorSpec(name=value.name, dtype=dtype, shape=dims)

    return Signature(
        inputs=[spec(v) for v in graph.input if v.name not in weights],
        outputs=[spec(v) for v in graph.output],
    )
