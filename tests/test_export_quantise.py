"""Export and static INT8 of convolutions with TF-"same" padding (timm's Conv2dSame, used by the
efficientnet-lite0 backbone): the exported graph pads by constants, and the quantiser leaves any
arithmetic on tensor shapes in float, so an INT8 graph pads by the same amounts as fp32."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from training.export import (
    export_and_check_program,
    export_onnx,
    export_torchscript,
    program_runner,
    static_same_padding,
)
from training.quantise import quantise_static_int8, shape_arithmetic
from training.tasks.base import Task

pytestmark = pytest.mark.fast  # in-process, no training, no server

SIZE = 37  # odd, so "same" padding at stride 2 is asymmetric


class SameNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from timm.layers import create_conv2d
        from timm.layers.conv2d_same import Conv2dSame

        torch.manual_seed(0)
        self.a = create_conv2d(3, 8, 3, stride=2, padding="same")
        self.b = create_conv2d(8, 8, 5, stride=2, padding="same", depthwise=True)
        self.head = nn.Linear(8, 4)
        assert isinstance(self.a, Conv2dSame) and isinstance(self.b, Conv2dSame)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(self.a(images), 0, 6)
        x = torch.clamp(self.b(x), 0, 6)
        return self.head(x.mean((2, 3)))


class _Checks:
    """What the exports and their parity checks read from a task (a classifier's defaults)."""

    input_names: ClassVar[list[str]] = ["images"]
    output_names: ClassVar[list[str]] = ["logits"]
    dynamic_axes: ClassVar[dict[str, dict[int, str]]] = {"images": {0: "batch"}, "logits": {0: "batch"}}
    collect_outputs = Task.collect_outputs
    parity = Task.parity
    parity_problem = Task.parity_problem


TASK = _Checks()


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, SIZE, SIZE)).astype(np.float32)


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _dynamic_export(model: nn.Module, path: Path) -> Path:
    """The graph a plain trace gives: padding worked out from the input size at run time."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.from_numpy(_images(2, 0)),),
            str(path),
            input_names=TASK.input_names,
            output_names=TASK.output_names,
            dynamic_axes=TASK.dynamic_axes,
            opset_version=17,
            dynamo=False,
        )
    return path


def test_export_pads_by_constants_and_restores_the_model(tmp_path):
    model = SameNet().eval()
    example = {"images": torch.from_numpy(_images(2, 0))}
    path = export_onnx(model, TASK, example, tmp_path / "m.onnx", opset=17)
    assert "Shape" not in _ops(path) and "Ceil" not in _ops(path)
    images = _images(5, 1)  # another batch size: only the batch axis is dynamic
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(_run(path, images), expected, atol=1e-5)
    ts = torch.jit.load(str(export_torchscript(model, example, tmp_path / "m.ts")))
    with torch.no_grad():
        np.testing.assert_allclose(ts(torch.from_numpy(images)).numpy(), expected, atol=1e-5)
    # the modules run their own (size-dependent) forward again after the export
    assert "forward" not in model.a.__dict__ and "forward" not in model.b.__dict__
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 4)


def test_static_padding_is_a_no_op_without_same_convolutions():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval()
    with static_same_padding(model, {"x": torch.zeros(1, 3, 8, 8)}):
        assert "forward" not in model[0].__dict__


def test_quantiser_leaves_shape_arithmetic_in_float(tmp_path):
    model = SameNet().eval()
    fp32 = _dynamic_export(model, tmp_path / "dynamic.onnx")
    graph = onnx.load(str(fp32))
    assert "Shape" in _ops(fp32)  # the trace did compute the padding at run time
    excluded = set(shape_arithmetic(graph))
    ceil = [n.name for n in graph.graph.node if n.op_type == "Ceil"]
    assert ceil and set(ceil) <= excluded
    assert not excluded & {n.name for n in graph.graph.node if n.op_type in ("Conv", "Gemm")}

    calibration = [{"images": _images(8, seed)} for seed in range(4)]
    int8 = quantise_static_int8(fp32, tmp_path / "int8.onnx", calibration)
    quantised = onnx.load(str(int8))
    producers = {o: n for n in quantised.graph.node for o in n.output}
    for node in quantised.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in producers:
            assert producers[node.input[0]].op_type not in ("Ceil", "Sub", "Mul", "Concat", "Cast")
    images = _images(16, 9)
    reference, candidate = _run(fp32, images), _run(int8, images)
    assert candidate.shape == reference.shape
    error = np.linalg.norm(candidate - reference) / np.linalg.norm(reference)
    assert error < 0.1, f"INT8 relative error {error:.3f}"


def _batches(model: nn.Module, sizes: tuple[int, ...]):
    batches = [({"images": torch.from_numpy(_images(n, 20 + n))}, None) for n in sizes]
    with torch.no_grad():
        reference = np.concatenate([model(b["images"]).numpy() for b, _ in batches])
    return reference, batches


def test_exported_program_ships_with_its_parity(tmp_path):
    model = SameNet().eval()
    reference, batches = _batches(model, (3, 7))  # neither is the example's batch size
    example = {"images": torch.from_numpy(_images(2, 0))}
    report = export_and_check_program(model, TASK, example, tmp_path / "m.pt2", reference, batches, 1e-4)
    assert report["file"] == "m.pt2" and "problem" not in report, report
    assert report["max_abs_diff"] <= 1e-4 and report["argmax_equal"]
    run = program_runner(tmp_path / "m.pt2")
    images = _images(5, 3)
    with torch.no_grad():
        np.testing.assert_allclose(
            run({"images": images}), model(torch.from_numpy(images)).numpy(), atol=1e-5
        )


class _DataDependent(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.flatten(1)
        return flat[:, :4] if flat.sum() > 0 else -flat[:, :4]  # branches on the data


class _FixedBatch(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.reshape(2, -1)[:, :4]  # only ever batches of two


@pytest.mark.parametrize(
    ("model", "says"),
    [(_DataDependent(), "torch.export failed"), (_FixedBatch(), "cannot run the test batches")],
)
def test_a_program_that_cannot_ship_is_left_out_with_the_reason(tmp_path, model, says):
    reference = np.zeros((10, 4), np.float32)
    _, batches = _batches(SameNet().eval(), (3, 7))
    example = {"images": torch.from_numpy(_images(2, 0))}
    report = export_and_check_program(model, TASK, example, tmp_path / "m.pt2", reference, batches, 1e-4)
    assert report["file"] is None and report["problem"].startswith(says), report
    assert not (tmp_path / "m.pt2").exists()


def test_dynamo_exporter_writes_one_file_with_the_dynamic_batch(tmp_path):
    model = SameNet().eval()
    example = {"images": torch.from_numpy(_images(2, 0))}
    path = export_onnx(model, TASK, example, tmp_path / "m.onnx", opset=17, dynamo=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no external .onnx.data beside it
    assert "Shape" not in _ops(path)
    images = _images(5, 1)
    with torch.no_grad():
        np.testing.assert_allclose(_run(path, images), model(torch.from_numpy(images)).numpy(), atol=1e-5)


def _conv_graph(weights: np.ndarray, bias: np.ndarray, group: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    # unpadded: every output sees data
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=group)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", weights.shape[1] * group, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("group", [1, 4])  # a plain and a depthwise convolution
def test_bias_correction_removes_the_mean_shift_of_rounded_weights(group):
    from onnx import numpy_helper

    from training.quantise import _int8_per_channel, correct_conv_bias

    rng = np.random.default_rng(group)
    weights = rng.normal(0, 1, (4, 4 // group, 3, 3)).astype(np.float32)
    weights[:, :, 1, 1] *= 40  # a large centre tap: the small ones round coarsely
    bias = rng.normal(0, 1, 4).astype(np.float32)
    model = _conv_graph(weights, bias, group)
    calibration = [{"x": rng.uniform(0, 6, (8, 4, 8, 8)).astype(np.float32)} for _ in range(4)]
    kept_in_float = _conv_graph(weights, bias, group)  # its weights are not rounded: nothing to correct
    assert correct_conv_bias(kept_in_float, calibration, excluded={"conv"}) == 0
    assert kept_in_float == _conv_graph(weights, bias, group)
    assert correct_conv_bias(model, calibration) == 1
    corrected = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "b"))

    def outputs(w: np.ndarray, b: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(
            _conv_graph(w.astype(np.float32), b, group).SerializeToString(),
            providers=["CPUExecutionProvider"],
        )
        return np.concatenate([session.run(None, c)[0] for c in calibration])

    reference = outputs(weights, bias)
    rounded = _int8_per_channel(weights.astype(np.float64))
    before = np.abs((outputs(rounded, bias) - reference).mean((0, 2, 3))).max()
    after = np.abs((outputs(rounded, corrected) - reference).mean((0, 2, 3))).max()
    assert after < 0.1 * before, (before, after)


def test_float_layers_stay_in_float_and_must_name_a_layer(tmp_path):
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    onnx.save(
        _conv_graph(rng.normal(0, 1, (4, 4, 3, 3)).astype(np.float32), np.zeros(4, np.float32), 1),
        tmp_path / "conv.onnx",
    )
    calibration = [{"x": rng.uniform(0, 6, (8, 4, 8, 8)).astype(np.float32)}]

    def conv_weights(float_layers: list[str]) -> str:
        out = quantise_static_int8(
            tmp_path / "conv.onnx", tmp_path / "q.onnx", calibration, float_layers=float_layers
        )
        model = onnx.load(str(out))
        conv = next(n for n in model.graph.node if n.op_type == "Conv")
        producers = {o: n.op_type for n in model.graph.node for o in n.output}
        initializers = {i.name: numpy_helper.to_array(i).dtype for i in model.graph.initializer}
        return producers.get(conv.input[1]) or str(initializers[conv.input[1]])

    assert conv_weights([]) == "DequantizeLinear"  # INT8 weights, dequantised for the fused kernel
    assert conv_weights(["w"]) == "float32"
    with pytest.raises(ValueError, match="name no layer"):
        conv_weights(["backbone.nothing."])


def test_float_layers_stay_float_when_onnx_runtime_opens_the_graph(tmp_path):
    """ONNX Runtime's WeightBiasQuantization would round a float convolution fed by a
    DequantizeLinear to INT8 per tensor when the session opens the graph: a depthwise convolution
    whose channels differ in scale loses its small channels. The server's sessions keep it float."""
    from onnx import TensorProto, helper, numpy_helper

    from serving.sessions import create_session

    rng = np.random.default_rng(3)
    depthwise = rng.normal(0, 1, (4, 1, 3, 3)).astype(np.float32)
    depthwise[0] *= 100  # one large channel: a per-tensor scale rounds the others' weights to 0
    depthwise[1:] *= 0.01  # the small channels alone reach the output
    pointwise = rng.normal(0, 0.5, (4, 4, 1, 1))
    pointwise[0] *= 1e-4  # the large channel's input is small, so every channel's output is alike
    initializers = {
        "w1": pointwise,
        "b1": rng.normal(0, 0.1, 4),
        "dw": depthwise,
        "bdw": rng.normal(0, 0.01, 4),
        "w3": np.concatenate([np.zeros((4, 1, 1, 1)), rng.normal(0, 0.5, (4, 3, 1, 1))], 1),
        "b3": rng.normal(0, 0.1, 4),
        "low": np.array(0.0),
        "high": np.array(6.0),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="pw1"),
        helper.make_node("Conv", ["a", "dw", "bdw"], ["d"], name="dw", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["d", "low", "high"], ["r"], name="relu6"),
        helper.make_node("Conv", ["r", "w3", "b3"], ["y"], name="pw3"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in initializers.items()],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        tmp_path / "g.onnx",
    )
    x = rng.uniform(0, 1, (8, 4, 8, 8)).astype(np.float32)
    quantised = quantise_static_int8(
        tmp_path / "g.onnx", tmp_path / "q.onnx", [{"x": x}], float_layers=["dw"], correct_bias=False
    )
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    as_written = ort.InferenceSession(str(quantised), plain, providers=["CPUExecutionProvider"])
    served, _ = create_session(quantised, 1, ["CPUExecutionProvider"])
    expected = as_written.run(None, {"x": x})[0]
    got = served.run(None, {"x": x})[0]
    # the QDQ graph's own rounding is the same either way; only the float layer's weights could differ
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()


def test_attention_products_can_stay_float(tmp_path):
    """A product of two activations (attention's scores) is left float when asked; the product with
    weights is quantised either way."""
    from onnx import TensorProto, helper, numpy_helper

    from training.quantise import activation_products

    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="dense"),
        helper.make_node("Transpose", ["h"], ["ht"], name="t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["h", "ht"], ["y"], name="scores"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.normal(0, 1, (8, 8)).astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp_path / "g.onnx")
    assert activation_products(model) == ["scores"]
    calibration = [{"x": rng.normal(0, 1, (8, 4, 8)).astype(np.float32)}]

    def dequantised_inputs(quantise_products: bool) -> dict[str, int]:
        out = quantise_static_int8(
            tmp_path / "g.onnx",
            tmp_path / "q.onnx",
            calibration,
            op_types=["MatMul"],
            float_outputs=["MatMul"],  # as the text tasks do
            quantise_activation_products=quantise_products,
            integer_matmuls=False,  # the QDQ pairs as the quantiser writes them
        )
        q = onnx.load(str(out))
        producers = {o: n.op_type for n in q.graph.node for o in n.output}
        return {
            n.name: sum(producers.get(i) == "DequantizeLinear" for i in n.input)
            for n in q.graph.node
            if n.op_type == "MatMul"
        }

    assert dequantised_inputs(True) == {"dense": 2, "scores": 2}
    assert dequantised_inputs(False) == {"dense": 2, "scores": 0}


def test_matrix_products_by_weights_become_integer_products_with_their_bias(tmp_path):
    """A QDQ product by a constant weight whose output stays float, and the bias added after it,
    become one MatMulIntegerToFloat; a product of two activations stays a MatMul; the answers are
    those of the graph as the quantiser wrote it, except that a float reader of the product's input
    (a residual add) reads the float tensor instead of its rounded copy."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="dense"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
        helper.make_node("Transpose", ["hb"], ["ht"], name="t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["hb", "ht"], ["scores"], name="scores"),
        helper.make_node("MatMul", ["scores", "hb"], ["mixed"], name="mix"),
        helper.make_node("MatMul", ["mixed", "w2"], ["y"], name="out"),
        helper.make_node("Add", ["x", "shift"], ["residual"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("residual", TensorProto.FLOAT, None),
        ],
        [
            numpy_helper.from_array(
                rng.normal(0, 1, (8, 8)).astype(np.float32) * np.linspace(0.1, 2, 8).astype(np.float32), "w"
            ),
            numpy_helper.from_array(rng.normal(0, 1, 8).astype(np.float32), "b"),
            numpy_helper.from_array(rng.normal(0, 1, (8, 3)).astype(np.float32), "w2"),
            numpy_helper.from_array(np.full((4, 8), 0.5, np.float32), "shift"),
        ],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        tmp_path / "g.onnx",
    )
    calibration = [{"x": rng.normal(0, 1, (8, 4, 8)).astype(np.float32)}]

    def quantised(fold: bool) -> Path:
        return quantise_static_int8(
            tmp_path / "g.onnx",
            tmp_path / f"q-{fold}.onnx",
            calibration,
            op_types=["MatMul"],
            float_outputs=["MatMul"],
            quantise_activation_products=False,
            integer_matmuls=fold,
        )

    folded, written = onnx.load(str(quantised(True))), quantised(False)
    ops = [n.op_type for n in folded.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2 and ops.count("MatMul") == 2 and ops.count("Add") == 1
    residual = next(n for n in folded.graph.node if n.op_type == "Add")
    assert list(residual.input) == ["x", "shift"]
    dense = next(n for n in folded.graph.node if n.name == "dense_integer")
    assert dense.input[-1] == "b" and dense.domain == "com.microsoft"
    x = {"x": rng.normal(0, 1, (5, 4, 8)).astype(np.float32)}
    cpu = ["CPUExecutionProvider"]
    expected, rounded = ort.InferenceSession(str(written), providers=cpu).run(None, x)
    got, exact = ort.InferenceSession(str(tmp_path / "q-True.onnx"), providers=cpu).run(None, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    reference = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=cpu).run(None, x)[1]
    np.testing.assert_allclose(exact, reference, atol=1e-6)
    assert np.abs(rounded - reference).max() > 1e-3  # what reading the rounded copy cost


def _conv_node(group: int, **attributes) -> onnx.NodeProto:
    return onnx.helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=group, **attributes)


@pytest.mark.parametrize(
    "group, attributes",
    [
        (1, {"pads": [0, 0, 1, 1], "strides": [2, 2]}),  # TF-"same" at stride 2: asymmetric padding
        (4, {"pads": [1, 1, 1, 1]}),  # depthwise
        (2, {"dilations": [2, 2], "pads": [2, 1, 2, 1]}),  # grouped, dilated
    ],
)
def test_conv_windows_times_the_weights_are_the_convolution(group, attributes):
    from onnx import helper, numpy_helper

    from training.quantise import conv_patches

    rng = np.random.default_rng(group)
    weights = rng.normal(0, 1, (4, 4 // group, 3, 3)).astype(np.float32)
    x = rng.normal(0, 1, (2, 4, 9, 9)).astype(np.float32)
    node = _conv_node(group, **attributes)
    model = helper.make_model(
        helper.make_graph(
            [node],
            "conv",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
    )
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    patches = conv_patches(x, node, (3, 3))  # (groups, windows, in/group·9)
    rows = weights.reshape(group, 4 // group, -1)
    product = np.matmul(patches, rows.transpose(0, 2, 1))  # (groups, b·oh·ow, out/group)
    b, oh, ow = y.shape[0], y.shape[2], y.shape[3]
    expected = product.reshape(group, b, oh, ow, 4 // group).transpose(1, 0, 4, 2, 3).reshape(y.shape)
    np.testing.assert_allclose(expected, y, atol=1e-4)


@pytest.mark.parametrize("group", [1, 8])
def test_weights_rounded_to_the_data_reach_the_output_with_less_error(group):
    from training.quantise import _int8_per_channel, round_to_data

    rng = np.random.default_rng(0)
    n = 8 // group * 9
    mix = rng.normal(0, 1, (group, n, n))  # correlated inputs, as neighbouring pixels are
    x = np.matmul(rng.normal(0, 1, (group, 4000, n)), mix)
    moment = np.matmul(x.transpose(0, 2, 1), x)
    weights = rng.normal(0, 0.1, (8, 8 // group, 3, 3))
    weights[:, :, 1, 1] *= 30  # a large centre tap: the others round coarsely
    rounded = round_to_data(weights, moment)

    scale = np.abs(weights.reshape(8, -1)).max(1) / 127
    steps = rounded.reshape(8, -1) / scale[:, None]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-6)  # on the quantiser's grid
    assert np.abs(steps).max() <= 127 + 1e-9

    def output_error(w: np.ndarray) -> float:
        delta = (w - weights).reshape(group, 8 // group, -1)
        return float(np.linalg.norm(np.matmul(x, delta.transpose(0, 2, 1))))

    nearest = _int8_per_channel(weights)
    assert output_error(rounded) < 0.8 * output_error(nearest), (output_error(rounded), output_error(nearest))


def test_least_error_ranges_clip_long_tails_and_keep_zero():
    from training.quantise import least_error_range

    rng = np.random.default_rng(0)

    def error(values: np.ndarray, lo: float, hi: float) -> float:
        step = (hi - lo) / 255
        zero = np.round(-lo / step)
        return float(np.mean(((np.clip(np.round(values / step) + zero, 0, 255) - zero) * step - values) ** 2))

    tail = rng.exponential(1, 200_000)  # a long tail: MinMax's step is set by a few values
    lo, hi = least_error_range(*np.histogram(tail, bins=2048), zeros=0)
    assert lo == 0 and hi < 0.95 * tail.max()
    assert error(tail, lo, hi) < 0.9 * error(tail, 0, tail.max())
    spread = rng.uniform(-3, 5, 100_000)  # no tail: the extremes stay
    lo, hi = least_error_range(*np.histogram(spread, bins=2048), zeros=0)
    assert lo == pytest.approx(-3, abs=0.05) and hi == pytest.approx(5, abs=0.05)
    lo, hi = least_error_range(*np.histogram(rng.uniform(1, 2, 1000), bins=64), zeros=0)
    assert lo <= 0 <= hi  # ranges always hold 0: zero padding and ReLU's zeros are exact


@pytest.mark.parametrize("method", ["least-error", "minmax"])
def test_static_int8_places_the_data_rounded_weights(tmp_path, method):
    from onnx import numpy_helper

    from training.quantise import (
        _prepared,
        conv_input_statistics,
        round_to_data,
        weighted_convs,
    )

    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.1, (8, 8, 3, 3)).astype(np.float32)
    weights[:, :, 1, 1] *= 30
    onnx.save(_conv_graph(weights, np.zeros(8, np.float32), 1), tmp_path / "conv.onnx")
    smooth = rng.uniform(0, 6, (64, 8, 1, 1)) + rng.normal(0, 0.3, (64, 8, 8, 8))  # correlated pixels
    calibration = [{"x": smooth[i : i + 16].astype(np.float32)} for i in range(0, 64, 16)]

    def quantised(to_data: bool) -> onnx.ModelProto:
        out = tmp_path / f"q{to_data}.onnx"
        quantise_static_int8(
            tmp_path / "conv.onnx",
            out,
            calibration,
            round_weights_to_data=to_data,
            calibration_method=method,
            integer_matmuls=False,
        )
        return onnx.load(str(out))

    model = quantised(True)
    tensors = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    with _prepared(tmp_path / "conv.onnx", symbolic_shapes=True) as prepared:
        graph = onnx.load(str(prepared))
    node = weighted_convs(graph)[0]
    _, moments = conv_input_statistics(graph, calibration, [node], hessians=True)
    expected = round_to_data(weights.astype(np.float64), moments["conv"])
    placed = tensors["w_quantized"] * tensors["w_scale"].reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(placed, expected, rtol=1e-6, atol=1e-7)

    x = calibration[0]["x"]

    def error(m: onnx.ModelProto) -> float:
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        reference = ort.InferenceSession(
            _conv_graph(weights, np.zeros(8, np.float32), 1).SerializeToString(),
            providers=["CPUExecutionProvider"],
        )
        return float(np.linalg.norm(session.run(None, {"x": x})[0] - reference.run(None, {"x": x})[0]))

    assert error(model) < error(quantised(False))


def test_convolutions_padded_by_auto_pad_keep_nearest_rounding(tmp_path):
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.normal(0, 1, (4, 4, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", auto_pad="SAME_UPPER")
    model = helper.make_model(
        helper.make_graph(
            [node],
            "conv",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4, 8, 8])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
    )
    onnx.save(model, tmp_path / "same.onnx")
    calibration = [{"x": rng.uniform(0, 6, (8, 4, 8, 8)).astype(np.float32)}]
    out = onnx.load(str(quantise_static_int8(tmp_path / "same.onnx", tmp_path / "q.onnx", calibration)))
    tensors = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    scale = np.abs(weights.reshape(4, -1)).max(1) / 127
    nearest = np.round(weights / scale.reshape(-1, 1, 1, 1))
    np.testing.assert_array_equal(tensors["w_quantized"], nearest)


def test_an_unknown_calibration_method_is_named(tmp_path):
    rng = np.random.default_rng(0)
    onnx.save(
        _conv_graph(rng.normal(0, 1, (4, 4, 3, 3)).astype(np.float32), np.zeros(4, np.float32), 1),
        tmp_path / "c.onnx",
    )
    with pytest.raises(ValueError, match="unknown calibration_method 'mse'; known: minmax, percentile"):
        quantise_static_int8(tmp_path / "c.onnx", tmp_path / "q.onnx", [], calibration_method="mse")


def _two_conv_graph(first: np.ndarray, second: np.ndarray) -> onnx.ModelProto:
    """conv → ReLU6 → conv, unpadded, biases zero."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="first"),
        helper.make_node("Clip", ["h", "lo", "hi"], ["r"], name="relu6"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="second"),
    ]
    constants = {
        "w1": first,
        "b1": np.zeros(first.shape[0], np.float32),
        "w2": second,
        "b2": np.zeros(second.shape[0], np.float32),
        "lo": np.array(0, np.float32),
        "hi": np.array(6, np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", first.shape[1], 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_output_means_match_fp32_after_the_activations_are_rounded(tmp_path):
    from training.quantise import channel_means, match_output_means

    rng = np.random.default_rng(0)
    first = rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32)
    second = rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)
    reference = _two_conv_graph(first, second)
    onnx.save(reference, tmp_path / "two.onnx")
    # a long tail: least-error clips it, and the clipping shifts the means
    calibration = [{"x": rng.exponential(1.0, (16, 4, 12, 12)).astype(np.float32)} for _ in range(4)]

    def quantised(match: bool) -> onnx.ModelProto:
        out = tmp_path / f"q{match}.onnx"
        quantise_static_int8(
            tmp_path / "two.onnx", out, calibration, calibration_method="least-error", match_means=match
        )
        return onnx.load(str(out))

    def shift(model: onnx.ModelProto) -> float:
        return float(np.abs(channel_means(model, calibration, ["y"])["y"] - targets["y"]).max())

    targets = channel_means(reference, calibration, ["y"])
    unmatched = quantised(False)
    before = shift(unmatched)
    assert before > 1e-3  # rounding and clipping the activations did shift the means
    matched = quantised(True)
    assert shift(matched) < 0.2 * before, (shift(matched), before)
    assert match_output_means(unmatched, reference, calibration) == 2  # both convolutions' biases
    assert shift(unmatched) < 0.2 * before
