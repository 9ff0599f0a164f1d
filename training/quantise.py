"""Post-training quantisation with ONNX Runtime's tools."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

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


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def weighted_convs(model: onnx.ModelProto, excluded: Collection[str] = ()) -> list[onnx.NodeProto]:
    """The 2-D convolutions whose weights are constants, except the `excluded` nodes (those stay float)."""
    weights = {i.name: i for i in model.graph.initializer}
    return [
        n
        for n in model.graph.node
        if n.op_type == "Conv"
        and n.name not in excluded
        and n.input[1] in weights
        and len(weights[n.input[1]].dims) == 4
    ]


def conv_patches(x: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, int]) -> np.ndarray:
    """The windows a 2-D convolution of `kernel` size multiplies its weights with, (groups, windows,
    in/group·kh·kw), in the order of the weights' flattened rows."""
    b, c, _, _ = x.shape
    group = _attribute(node, "group", 1)
    kh, kw = kernel
    top, left, bottom, right = _attribute(node, "pads", [0, 0, 0, 0])
    sh, sw = _attribute(node, "strides", [1, 1])
    dh, dw = _attribute(node, "dilations", [1, 1])
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # (b, c, oh, ow, kh, kw)
    oh, ow = windows.shape[2:4]
    windows = windows.reshape(b, group, c // group, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    return windows.reshape(group, b * oh * ow, (c // group) * kh * kw)


def _probe(model: onnx.ModelProto, tensors: Collection[str], only: bool = False) -> Any:
    """A session of `model` that also answers the given intermediate tensors (`only` them: ONNX
    Runtime then leaves out the nodes they do not need). It has the server's session options, so
    what the build measures of a quantised graph (`match_output_means`) is what the server computes,
    on any CPU (without them, a CPU whose INT8 products saturate taught the corrections its errors)."""
    import onnxruntime as ort
    from onnx import helper

    from serving.sessions import session_options

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if only:
        del probe.graph.output[:]
    outputs = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(tensors):
        if name not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(
        probe.SerializeToString(), sess_options=session_options(0), providers=["CPUExecutionProvider"]
    )


def conv_input_statistics(
    model: onnx.ModelProto,
    calibration: list[dict[str, np.ndarray]],
    convs: list[onnx.NodeProto],
    hessians: bool,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Over the calibration inputs: the mean of each convolution's input per channel (by input name),
    and, with `hessians`, each convolution's second moment of its windows Σ x·xᵀ per group
    (groups, n, n) (by node name; none for a convolution padded by auto_pad): how much each weight's
    error reaches the output."""
    session = _probe(model, [n.input[0] for n in convs])
    names = [o.name for o in session.get_outputs()]
    dims = {i.name: tuple(i.dims) for i in model.graph.initializer}
    kernels = {n.name: dims[n.input[1]][2:] for n in convs}
    totals: dict[str, np.ndarray] = {}
    moments: dict[str, np.ndarray] = {}
    count = 0
    for feeds in calibration:
        values = dict(zip(names, session.run(None, feeds)))
        for node in convs:
            value = values[node.input[0]]
            if hessians and _attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
                # (convolutions padded by auto_pad keep nearest rounding); a few images at a time, so
                # that their windows stay within ~128 MB
                size = int(np.prod(kernels[node.name])) * value[:1].size
                step = max(1, 32_000_000 // max(size, 1))
                for start in range(0, len(value), step):
                    patches = conv_patches(value[start : start + step], node, kernels[node.name])
                    # float32 products (a float64 product of float32 windows is ten times slower), summed in float64
                    product = np.matmul(patches.transpose(0, 2, 1), patches).astype(np.float64)
                    moments[node.name] = moments[node.name] + product if node.name in moments else product
        for name, value in values.items():
            if value.ndim >= 3:  # a convolution's input: (batch, channels, spatial...)
                axes = (0, *range(2, value.ndim))
                totals[name] = totals.get(name, 0) + value.mean(axes, dtype=np.float64) * value.shape[0]
        count += next(iter(feeds.values())).shape[0]
    return {name: total / count for name, total in totals.items()}, moments


def round_to_data(weights: np.ndarray, moment: np.ndarray, damping: float = 0.01) -> np.ndarray:
    """A convolution's weights (out, in/group, kh, kw) on the INT8 grid the quantiser uses (per output
    channel, symmetric, scale max|w|/127), rounded so that the output error on the calibration data,
    ΔW·x, is least rather than each weight's own: one input column at a time, the rounding error of
    the column is spread over the columns not yet rounded through the inverse of the windows' second
    moment `moment` (groups, n, n) (GPTQ: Frantar et al., 2023). Returns the rounded weights in float."""
    out = weights.shape[0]
    group = moment.shape[0]
    rows = weights.reshape(group, out // group, -1).astype(np.float64)
    scale = np.abs(weights.reshape(out, -1)).max(1) / 127
    scale[scale == 0] = 1
    scale = scale.reshape(group, out // group)
    n = rows.shape[2]
    h = moment.astype(np.float64, copy=True)
    diagonal = h[:, np.arange(n), np.arange(n)]
    dead = diagonal == 0  # inputs that are always zero: their weights never matter
    h[:, np.arange(n), np.arange(n)] += damping * diagonal.mean(1, keepdims=True) + dead
    upper = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)
    rounded = np.empty_like(rows)
    for i in range(n):
        column = rows[:, :, i]
        q = np.clip(np.round(column / scale), -127, 127) * scale
        error = (column - q) / upper[:, i, i][:, None]
        rows[:, :, i:] -= error[:, :, None] * upper[:, None, i, i:]
        rounded[:, :, i] = q
    return rounded.reshape(weights.shape)


def correct_conv_bias(
    model: onnx.ModelProto,
    calibration: list[dict[str, np.ndarray]],
    excluded: Collection[str] = (),
    rounded: dict[str, np.ndarray] | None = None,
    means: dict[str, np.ndarray] | None = None,
) -> int:
    """Bias correction (Nagel et al., "Data-Free Quantization", 2019, with measured input means):
    rounding a convolution's weights W to INT8 changes its output by ΔW·x, whose mean over the data,
    ΔW·E[x], is a per-channel shift that the layers after it amplify (on imagenet, the first depthwise
    convolution's rounding alone took the logits to 17 dB SNR; corrected, 31 dB). Each convolution's
    bias is lowered by that shift, with E[x] the mean of its input over the calibration inputs, so
    the quantised layer's output keeps fp32's mean. The `excluded` nodes stay in float, so their
    biases are left as they are. `rounded` gives the rounded weights by name where they are not the
    nearest INT8 values, `means` the input means when they are already measured. Edits `model` in
    place; returns how many biases it corrected."""
    from onnx import numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    convs = [n for n in weighted_convs(model, excluded) if len(n.input) > 2 and n.input[2] in weights]
    if not convs:
        return 0
    if means is None:
        means, _ = conv_input_statistics(model, calibration, convs, hessians=False)
    rounded = rounded or {}
    for node in convs:
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float64)
        mean = means[node.input[0]]
        group = _attribute(node, "group", 1)
        q = rounded.get(node.input[1])
        delta = (_int8_per_channel(w) if q is None else q) - w
        shift = delta.reshape(w.shape[0], w.shape[1], -1).sum(-1)  # (out, in / group)
        per_group = mean.reshape(group, -1)[np.arange(w.shape[0]) // (w.shape[0] // group)]
        bias = numpy_helper.to_array(weights[node.input[2]]).astype(np.float64)
        corrected = (bias - (shift * per_group).sum(1)).astype(np.float32)
        weights[node.input[2]].CopyFrom(numpy_helper.from_array(corrected, node.input[2]))
    return len(convs)


def channel_means(
    model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]], tensors: Collection[str]
) -> dict[str, np.ndarray]:
    """The mean of each of `tensors` (batch, channels, ...) per channel over the calibration inputs."""
    session = _probe(model, tensors, only=True)
    names = [o.name for o in session.get_outputs()]
    totals: dict[str, np.ndarray] = {}
    count = 0
    for feeds in calibration:
        for name, value in zip(names, session.run(None, feeds)):
            axes = (0, *range(2, value.ndim))
            totals[name] = totals.get(name, 0) + value.mean(axes, dtype=np.float64) * value.shape[0]
        count += next(iter(feeds.values())).shape[0]
    return {name: total / count for name, total in totals.items()}


# per-channel means settle on a few images, and each convolution costs a pass over them
MEANS_FROM = 128


def _first(calibration: list[dict[str, np.ndarray]], count: int) -> list[dict[str, np.ndarray]]:
    """The leading calibration batches that hold at least `count` inputs (all of them if fewer)."""
    taken, out = 0, []
    for feeds in calibration:
        if taken >= count:
            break
        out.append(feeds)
        taken += next(iter(feeds.values())).shape[0]
    return out


def match_output_means(
    quantised: onnx.ModelProto, reference: onnx.ModelProto, calibration: list[dict[str, np.ndarray]]
) -> int:
    """Empirical bias correction: in place, each quantised convolution's INT32 bias is moved so that
    what the next layer reads — the convolution's output after its QuantizeLinear/DequantizeLinear
    pair, which also holds the activation it absorbed (ReLU6's Clip becomes the pair's range) — keeps
    the per-channel mean of the same tensor in the float `reference` over the calibration inputs.
    `correct_conv_bias` removes the shift that the weights' rounding makes; this one also removes the
    shifts of rounding and clipping the activations, which no formula gives. One convolution at a
    time in graph order, each measured with the ones before it corrected (corrected all at once, each
    one would also take out the shift its inputs carry, which the corrections before it already
    remove). Returns how many biases it moved."""
    from onnx import numpy_helper

    tensors = {i.name: i for i in quantised.graph.initializer}
    producer = {o: n for n in quantised.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in quantised.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def after(name: str, op_type: str) -> str | None:
        return next((n.output[0] for n in readers.get(name, []) if n.op_type == op_type), None)

    known = {o for n in reference.graph.node for o in n.output}
    layers: list[
        tuple[str, str, onnx.TensorProto, onnx.TensorProto]
    ] = []  # (output, what is read, bias, scale)
    for node in quantised.graph.node:
        bias = producer.get(node.input[2]) if node.op_type == "Conv" and len(node.input) > 2 else None
        if bias is None or bias.op_type != "DequantizeLinear":
            continue
        integers, scales = tensors.get(bias.input[0]), tensors.get(bias.input[1])
        if integers is None or scales is None or integers.data_type != onnx.TensorProto.INT32:
            continue
        quantise = after(node.output[0], "QuantizeLinear")
        read = (after(quantise, "DequantizeLinear") if quantise else None) or node.output[0]
        # the float graph's name: the convolution's, or the pair's where the convolution makes a graph output
        name = next((n for n in (node.output[0], read) if n in known), None)
        if name is not None:
            layers.append((name, read, integers, scales))
    if not layers:
        return 0
    targets = channel_means(reference, calibration, [out for out, *_ in layers])
    for out, read, integers, scales in layers:
        shift = channel_means(quantised, calibration, [read])[read] - targets[out]
        step = numpy_helper.to_array(scales).astype(np.float64)
        steps = np.where(
            step > 0, np.round(shift / np.where(step > 0, step, 1)), 0
        )  # all-zero weights: no scale
        moved = numpy_helper.to_array(integers).astype(np.int64) - steps.astype(np.int64)
        limit = np.iinfo(np.int32)
        integers.CopyFrom(
            numpy_helper.from_array(np.clip(moved, limit.min, limit.max).astype(np.int32), integers.name)
        )
    return len(layers)


def place_rounded_weights(model: onnx.ModelProto, rounded: dict[str, np.ndarray]) -> int:
    """In place: the INT8 weights of a QDQ graph (`<name>_quantized`, beside its `<name>_scale`) set to
    `rounded` (weights by name, in float, on the grid of those scales); returns how many."""
    from onnx import numpy_helper

    tensors = {i.name: i for i in model.graph.initializer}
    placed = 0
    for name, values in rounded.items():
        integers, scales = tensors.get(f"{name}_quantized"), tensors.get(f"{name}_scale")
        if integers is None or scales is None:
            continue
        scale = numpy_helper.to_array(scales).astype(np.float64).reshape(-1, *[1] * (values.ndim - 1))
        q = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
        integers.CopyFrom(numpy_helper.from_array(q, integers.name))
        placed += 1
    return placed


def least_error_range(
    counts: np.ndarray, edges: np.ndarray, zeros: int, levels: int = 256
) -> tuple[float, float]:
    """The range [lo, hi] (0 inside it) of an asymmetric `levels`-step quantiser with the least mean
    squared error over a histogram of values (`zeros` of them exactly 0, which 0 always represents):
    values inside are rounded (error step²/12 each), values outside are clipped to the range's ends.
    Searched over each end shrunk towards 0 from the histogram's extremes."""
    centres = (edges[:-1] + edges[1:]) / 2
    counts = counts.astype(np.float64)
    low, high = min(float(edges[0]), 0.0), max(float(edges[-1]), 0.0)
    shrink = np.linspace(0.2, 1.0, 81)
    los = low * shrink if low < 0 else np.zeros(1)
    his = high * shrink if high > 0 else np.zeros(1)
    lo, hi = los[:, None, None], his[None, :, None]
    step = np.maximum(hi - lo, 1e-12) / (levels - 1)
    x, c = centres[None, None, :], counts[None, None, :]
    clipped = np.where(x > hi, (x - hi) ** 2, 0) + np.where(x < lo, (lo - x) ** 2, 0)
    inside = ((x >= lo) & (x <= hi)) * c
    error = (c * clipped).sum(-1) + step[..., 0] ** 2 / 12 * np.maximum(inside.sum(-1) - zeros, 0)
    i, j = np.unravel_index(np.argmin(error), error.shape)
    return float(los[i]), float(his[j])


def activation_ranges(
    model: onnx.ModelProto,
    calibration: list[dict[str, np.ndarray]],
    tensors: Collection[str],
    bins: int = 2048,
) -> dict[str, tuple[float, float]]:
    """Each of the `tensors`' quantisation range with the least squared rounding and clipping error over
    the calibration inputs (`least_error_range`): the extremes of a few outliers no longer set the
    step for every other value, as MinMax's do. Two passes: the extremes, then a histogram between
    them (of at most about a million values of each tensor per batch)."""
    session = _probe(model, tensors)
    names = [o.name for o in session.get_outputs()]
    wanted = set(tensors)
    extremes: dict[str, tuple[float, float]] = {}
    for feeds in calibration:
        for name, value in zip(names, session.run(None, feeds)):
            if name in wanted and value.size and value.dtype == np.float32:
                lo, hi = float(value.min()), float(value.max())
                old = extremes.get(name, (lo, hi))
                extremes[name] = (min(lo, old[0]), max(hi, old[1]))
    histograms: dict[str, list[Any]] = {}
    for feeds in calibration:
        for name, value in zip(names, session.run(None, feeds)):
            if name not in extremes:
                continue
            lo, hi = extremes[name]
            sample = value.ravel()[:: max(1, value.size // 1_000_000)]
            counts, edges = np.histogram(sample, bins=bins, range=(lo, hi if hi > lo else lo + 1))
            entry = histograms.setdefault(name, [0, edges, 0])
            entry[0] = entry[0] + counts
            entry[2] += int(np.count_nonzero(sample == 0))
    return {name: least_error_range(*histograms[name]) for name in histograms}


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


# how activation ranges are read from the calibration inputs: their extremes, the 99.999th percentile
# of their magnitudes (a few outliers no longer widen the range for every other value), or the range
# that keeps the distribution's entropy; "least-error" (`activation_ranges`) is the project's own
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


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
    round_weights_to_data: bool = True,
    calibration_method: str = "minmax",
    match_means: bool = True,
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
    not with `integer_matmuls=False`). Convolutions' weights are rounded for the least output error
    on the calibration inputs (`round_to_data`), not each to its nearest INT8 value (with
    `round_weights_to_data=False`), and their biases then moved so that each one's quantised output
    keeps fp32's mean per channel on the calibration inputs (`match_output_means`; not with
    `match_means=False`)."""
    if calibration_method not in (*CALIBRATION_METHODS, "least-error"):
        known = ", ".join([*CALIBRATION_METHODS, "least-error"])
        raise ValueError(f"unknown calibration_method {calibration_method!r}; known: {known}")
    out_path = Path(out_path).resolve()
    with _prepared(fp32_path, symbolic_shapes=symbolic_shapes) as prepared:
        graph = onnx.load(str(prepared))
        reference = onnx.ModelProto()
        reference.CopyFrom(graph)  # before bias correction edits `graph`
        in_float = nodes_named(graph, float_layers)
        if float_layers and not in_float:
            raise ValueError(f"quantise.float_layers {list(float_layers)} name no layer of {fp32_path.name}")
        excluded = shape_arithmetic(graph) + in_float
        if not quantise_activation_products:
            excluded += activation_products(graph)
        convs = weighted_convs(graph, set(excluded)) if op_types is None or "Conv" in op_types else []
        rounded: dict[str, np.ndarray] = {}
        if convs and (correct_bias or round_weights_to_data):
            from onnx import numpy_helper

            means, moments = conv_input_statistics(graph, calibration, convs, hessians=round_weights_to_data)
            weights = {i.name: i for i in graph.graph.initializer}
            for node in convs if round_weights_to_data else ():
                if node.name not in moments:
                    continue
                w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float64)
                rounded[node.input[1]] = round_to_data(w, moments[node.name])
            if correct_bias and correct_conv_bias(graph, calibration, set(excluded), rounded, means):
                onnx.save(graph, str(prepared))
        options: dict[str, Any] = {}
        if float_outputs:
            options["OpTypesToExcludeOutputQuantization"] = float_outputs
        if calibration_method == "least-error":
            arithmetic = set(shape_arithmetic(graph))
            shapes = {o for n in graph.graph.node if n.name in arithmetic for o in n.output}
            floats = [
                v.name
                for v in [*graph.graph.input, *graph.graph.value_info]
                if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and v.name not in shapes
            ]
            ranges = activation_ranges(graph, calibration, floats)
            options["TensorQuantOverrides"] = {
                name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for name, (lo, hi) in ranges.items()
            }
        quantize_static(
            str(prepared),
            str(out_path),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # least-error's ranges override the calibrated ones for every float tensor it measured
            calibrate_method=CALIBRATION_METHODS.get(calibration_method, CalibrationMethod.MinMax),
            op_types_to_quantize=op_types,
            nodes_to_exclude=excluded,
            extra_options=options or None,
        )
    match_means = match_means and bool(convs)
    if integer_matmuls or rounded or match_means:
        quantised = onnx.load(str(out_path))
        changed = place_rounded_weights(quantised, rounded) if rounded else 0
        changed += (
            match_output_means(quantised, reference, _first(calibration, MEANS_FROM)) if match_means else 0
        )
        changed += fold_integer_matmuls(quantised) if integer_matmuls else 0
        if changed:
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
