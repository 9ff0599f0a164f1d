"""Post-training quantisation with ONNX Runtime's tools."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Collection, Iterator
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


def _int8_per_channel(weights: np.ndarray) -> np.ndarray:
    """What the quantiser makes of a weight tensor (QInt8, symmetric, per output channel), back in float."""
    rows = weights.reshape(weights.shape[0], -1)
    scale = np.abs(rows).max(1, keepdims=True) / 127
    scale[scale == 0] = 1
    return (np.round(rows / scale).clip(-127, 127) * scale).reshape(weights.shape)


def correct_conv_bias(
    model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]], excluded: Collection[str] = ()
) -> int:
    """Bias correction (Nagel et al., "Data-Free Quantization", 2019, with measured input means):
    rounding a convolution's weights W to INT8 changes its output by ΔW·x, whose mean over the data,
    ΔW·E[x], is a per-channel shift that the layers after it amplify (on imagenet, the first depthwise
    convolution's rounding alone took the logits to 17 dB SNR; corrected, 31 dB). Each convolution's
    bias is lowered by that shift, with E[x] the mean of its input over the calibration inputs, so
    the quantised layer's output keeps fp32's mean. The `excluded` nodes stay in float, so their
    biases are left as they are. Edits `model` in place; returns how many biases it corrected."""
    from onnx import helper, numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    convs = [
        n
        for n in model.graph.node
        if n.op_type == "Conv"
        and n.name not in excluded
        and len(n.input) > 2
        and n.input[1] in weights
        and n.input[2] in weights
    ]
    if not convs:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(n.input[0] for n in convs):
        if name not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    import onnxruntime as ort

    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    totals: dict[str, np.ndarray] = {}
    count = 0
    for feeds in calibration:
        for name, value in zip(names, session.run(None, feeds)):
            if value.ndim >= 3:  # a convolution's input: (batch, channels, spatial...)
                axes = (0, *range(2, value.ndim))
                totals[name] = totals.get(name, 0) + value.mean(axes, dtype=np.float64) * value.shape[0]
        count += next(iter(feeds.values())).shape[0]
    for node in convs:
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float64)
        mean = totals[node.input[0]] / count
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        shift = (_int8_per_channel(w) - w).reshape(w.shape[0], w.shape[1], -1).sum(-1)  # (out, in / group)
        per_group = mean.reshape(group, -1)[np.arange(w.shape[0]) // (w.shape[0] // group)]
        bias = numpy_helper.to_array(weights[node.input[2]]).astype(np.float64)
        corrected = (bias - (shift * per_group).sum(1)).astype(np.float32)
        weights[node.input[2]].CopyFrom(numpy_helper.from_array(corrected, node.input[2]))
    return len(convs)


class _Calibration(CalibrationDataReader):
    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def nodes_named(model: onnx.ModelProto, fragments: Collection[str]) -> list[str]:
    """Names of the nodes whose name or one of whose inputs (a layer's weights: `backbone.conv_stem.weight`,
    the module's name whichever exporter made the graph) contains one of the fragments."""
    return [
        n.name
        for n in model.graph.node
        if n.name and any(f in name for f in fragments for name in (n.name, *n.input))
    ]


def activation_products(model: onnx.ModelProto) -> list[str]:
    """Names of the matrix products of two computed tensors, no weights among their inputs (a
    transformer's attention scores and their weighted sum of values)."""
    constant = {i.name for i in model.graph.initializer}
    constant.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.name and not any(i in constant for i in n.input)
    ]


def quantise_static_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: list[dict[str, np.ndarray]],
    symbolic_shapes: bool = True,
    op_types: list[str] | None = None,
    float_outputs: list[str] | None = None,
    correct_bias: bool = True,
    float_layers: Collection[str] = (),
    quantise_activation_products: bool = True,
    integer_matmuls: bool = True,
) -> Path:
    """Static INT8 in QDQ format, per-channel weights, activation ranges from calibration inputs
    (MinMax over what the server would feed). The ranges are fixed in the graph, so an input's
    answer does not depend on what else shares its batch (dynamic quantisation's per-call ranges
    do). `op_types` limits what is quantised (transformers: the matrix products and embeddings);
    the outputs of the `float_outputs` operator types stay float. Arithmetic on tensor shapes is never
    quantised (`shape_arithmetic`), and convolutions' biases absorb the mean shift their weights'
    rounding causes (`correct_conv_bias`; `correct_bias=False` leaves them). The layers named by
    `float_layers` (`nodes_named`) stay in float, and so do the products of two activations
    (`activation_products`) unless `quantise_activation_products`. Matrix products by weights whose
    output stays float become MatMulIntegerToFloat nodes with their bias (`fold_integer_matmuls`;
    not with `integer_matmuls=False`)."""
    out_path = Path(out_path).resolve()
    with _prepared(fp32_path, symbolic_shapes=symbolic_shapes) as prepared:
        graph = onnx.load(str(prepared))
        in_float = nodes_named(graph, float_layers)
        if float_layers and not in_float:
            raise ValueError(f"quantise.float_layers {list(float_layers)} name no layer of {fp32_path.name}")
        excluded = shape_arithmetic(graph) + in_float
        if not quantise_activation_products:
            excluded += activation_products(graph)
        if correct_bias and correct_conv_bias(graph, calibration, set(excluded)):
            onnx.save(graph, str(prepared))
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
    if integer_matmuls:
        quantised = onnx.load(str(out_path))
        if fold_integer_matmuls(quantised):
            onnx.save(quantised, str(out_path))
    return out_path


def fold_integer_matmuls(model: onnx.ModelProto) -> int:
    """In place: each QDQ matrix product by a constant weight whose result stays float —
    DequantizeLinear(x) @ DequantizeLinear(w), then `+ bias` where a 1-D constant bias follows —
    becomes one com.microsoft MatMulIntegerToFloat (UINT8 activations, INT8 weights per tensor or
    per output column, the bias added in the same pass); returns how many. ONNX Runtime makes the
    same integer product of the pair itself when it opens the graph, but leaves the bias to a
    separate Add over the whole output, one more pass through memory per layer (two dozen in a
    six-layer encoder); the products' answers are the same. Products whose result is quantised again
    are left for ONNX Runtime's integer kernels. The input's other float readers read the unrounded
    tensor: less rounding on the residual stream, and one DequantizeLinear pass fewer."""
    from onnx import helper

    graph = model.graph
    constants = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def column_axis(dq: onnx.NodeProto) -> bool:
        """Whether a weight's DequantizeLinear is per tensor or per output column."""
        scale = constants.get(dq.input[1])
        if scale is None:
            return False
        if len(scale.dims) == 0 or int(np.prod(scale.dims)) == 1:
            return True
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        rank = len(constants[dq.input[0]].dims)
        return rank == 2 and axis in (1, -1)

    replaced: dict[int, onnx.NodeProto] = {}  # id of the node replaced → its replacement
    dropped: set[int] = set()  # ids of the bias additions folded into one
    read: dict[int, onnx.NodeProto] = {}  # the activations' DequantizeLinear nodes read by them
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        da, dw = (producer.get(i) for i in node.input)
        if not (da and dw and da.op_type == dw.op_type == "DequantizeLinear"):
            continue
        if dw.input[0] not in constants or not column_axis(dw):
            continue
        out, bias, add = node.output[0], [], None
        after = consumers.get(out, [])
        if len(after) == 1 and after[0].op_type == "Add":
            other = [i for i in after[0].input if i != out]
            if len(other) == 1 and other[0] in constants and len(constants[other[0]].dims) == 1:
                bias, out, add = other, after[0].output[0], after[0]
        if any(c.op_type == "QuantizeLinear" for c in consumers.get(out, [])):
            continue
        if add is not None:
            dropped.add(id(add))
        inputs = [da.input[0], dw.input[0], da.input[1], dw.input[1]]
        inputs += [da.input[2] if len(da.input) > 2 else "", dw.input[2] if len(dw.input) > 2 else ""]
        read[id(da)] = da
        replaced[id(node)] = helper.make_node(
            "MatMulIntegerToFloat", inputs + bias, [out], name=f"{node.name}_integer", domain="com.microsoft"
        )
    if not replaced:
        return 0
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in dropped]
    # The other readers of an integer product's quantised input (a residual add, a LayerNormalization)
    # read the float tensor it was quantised from, unless they are quantised themselves (their output
    # goes to a QuantizeLinear): no rounding on the residual stream, and no DequantizeLinear pass.
    quantised_out = {i for n in nodes if n.op_type == "QuantizeLinear" for i in n.input[:1]}
    for dq in read.values():
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        for reader in nodes:
            if dq.output[0] in reader.input and not any(o in quantised_out for o in reader.output):
                reader.input[:] = [q.input[0] if i == dq.output[0] else i for i in reader.input]
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    nodes = [n for n in nodes if n.op_type != "DequantizeLinear" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replaced)


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
