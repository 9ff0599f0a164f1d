"""The GPU path, as far as it runs without a GPU: the fp16 variant (conversion and its gate), the
I/O-bound run that GPU sessions use (on the CPU provider), TensorRT's options and engine profile,
the GPU batch limit, and the fallback to the CPU variant when no GPU provider initialises."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving import sessions
from serving.manifest import Signature, TensorSpec, load_manifest, write_manifest
from serving.runtime import Runtime
from serving.sessions import (
    CPU,
    BoundSession,
    create_session,
    provider_chain,
    provider_options,
    trt_profile,
)
from serving.settings import Settings
from tests.conftest import series_manifest
from training.fp16 import FP16_FILE, convert_fp16, fp16_gate, fp16_variant
from training.tasks.base import Task

pytestmark = pytest.mark.fast

HAS_GPU = shutil.which("nvidia-smi") is not None
FEATURES, HIDDEN, CLASSES = 48, 96, 5


def mlp(path: Path, fill: bool = False) -> Signature:
    """x [batch, 48] → 2-layer MLP → logits [batch, 5] and their softmax, `probs`; with `fill`, -1e30
    (as attention masks use) is added to the last logit, beyond float16's range."""
    rng = np.random.default_rng(3)
    params = {
        "w1": rng.normal(0, 0.3, (FEATURES, HIDDEN)).astype(np.float32),
        "b1": rng.normal(0, 0.1, HIDDEN).astype(np.float32),
        "w2": rng.normal(0, 0.3, (HIDDEN, CLASSES)).astype(np.float32),
        "fill": np.array([0, 0, 0, 0, -1e30 if fill else 0], dtype=np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["raw"]),
        helper.make_node("Add", ["raw", "fill"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", CLASSES]),
        ],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return Signature(
        inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", FEATURES])],
        outputs=[
            TensorSpec(name="logits", dtype="float32", shape=["batch", CLASSES]),
            TensorSpec(name="probs", dtype="float32", shape=["batch", CLASSES]),
        ],
    )


def inputs(count: int = 256) -> np.ndarray:
    return np.random.default_rng(5).normal(0, 1, (count, FEATURES)).astype(np.float32)


def cpu_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=[CPU])


class Classifier:
    """The comparison every classifier task makes (`Task.parity`, `Task.parity_problem`)."""

    parity = Task.parity
    parity_problem = Task.parity_problem


# --- the fp16 variant --------------------------------------------------------------------------


def test_fp16_graph_keeps_float32_io_halves_the_weights_and_matches_fp32_on_the_cpu(tmp_path):
    mlp(tmp_path / "model.onnx", fill=True)
    convert_fp16(tmp_path / "model.onnx", tmp_path / FP16_FILE)
    half = onnx.load(tmp_path / FP16_FILE)
    io = [*half.graph.input, *half.graph.output]
    assert {v.type.tensor_type.elem_type for v in io} == {TensorProto.FLOAT}  # the server feeds it as fp32
    weights = {i.name: i.data_type for i in half.graph.initializer}
    assert weights["w1"] == weights["w2"] == TensorProto.FLOAT16
    assert {n.op_type for n in half.graph.node} >= {"Cast"}  # at the float32 inputs and outputs
    sizes = [(tmp_path / f).stat().st_size for f in ("model.onnx", FP16_FILE)]
    assert sizes[1] < 0.55 * sizes[0]

    # ONNX Runtime's CPU provider runs the float16 graph (casting where it has no float16 kernel)
    x = inputs()
    fp32 = cpu_session(tmp_path / "model.onnx").run(None, {"x": x})
    fp16 = cpu_session(tmp_path / FP16_FILE).run(None, {"x": x})
    assert all(o.dtype == np.float32 for o in fp16)
    # the -1e30 fill was clamped to float16's -65504: still a logit that never wins
    assert fp16[0][:, -1].max() == pytest.approx(-65504, rel=1e-2) and not fp16[1][:, -1].any()
    parity, problem = fp16_gate(Classifier(), fp32[1], fp16[1], 0.9, 0.9, rtol=0.01)  # probabilities
    assert problem is None and parity["gate_passed"] and parity["argmax_equal_vs_fp32"]
    assert 0 < parity["max_abs_diff_vs_fp32"] < 0.01 and parity["limit"] == 0.01


def test_fp16_graph_of_resizes_sharing_their_scales_loads(tmp_path):
    """torch.export shares one `scales` constant between upsampling Resize nodes; the converter keeps
    it float32 and casts it once per Resize under one name. The variant must still load and match."""
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Resize", ["r", "", "scales"], ["up1"], mode="nearest"),
        helper.make_node("Resize", ["r", "", "scales"], ["up2"], mode="nearest"),
        helper.make_node("Add", ["up1", "up2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "up",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 8, 8])],
        [scales],
        value_info=[
            helper.make_tensor_value_info("scales", TensorProto.FLOAT, [4])
        ],  # as torch.export writes
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, tmp_path / "up.onnx")
    convert_fp16(tmp_path / "up.onnx", tmp_path / FP16_FILE)
    x = np.random.default_rng(0).normal(size=(3, 2, 4, 4)).astype(np.float32)
    (fp32,) = cpu_session(tmp_path / "up.onnx").run(None, {"x": x})
    (fp16,) = cpu_session(tmp_path / FP16_FILE).run(None, {"x": x})
    np.testing.assert_allclose(fp16, fp32, atol=1e-2)


def test_fp16_gate_fails_on_a_changed_label_a_large_difference_or_a_nan():
    ref = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]], dtype=np.float32)
    near = ref + np.float32(1e-3)
    # the tolerance scales with the largest output (3 here)
    assert fp16_gate(Classifier(), ref, near, 0.8, 0.8, rtol=0.05) == (
        {
            "max_abs_diff_vs_fp32": pytest.approx(1e-3, rel=1e-3),
            "argmax_equal_vs_fp32": True,
            "argmax_agreement_vs_fp32": 1.0,
            "rtol": 0.05,
            "limit": pytest.approx(0.15),
            "metric_drop": 0.0,
            "gate_passed": True,
        },
        None,
    )
    flipped = ref.copy()
    flipped[0, 1] = 2.01  # within the tolerance, but another label wins
    parity, problem = fp16_gate(Classifier(), ref, flipped, 0.8, 0.75, rtol=1.0)
    assert not parity["gate_passed"] and problem == "the argmax differs (for 50.00% of the inputs)"
    assert parity["argmax_agreement_vs_fp32"] == 0.5
    assert parity["metric_drop"] == pytest.approx(0.05)
    _, problem = fp16_gate(Classifier(), ref, ref + 0.2, 0.8, 0.8, rtol=0.05)
    assert problem == "max |Δ| = 2.00e-01 (limit 1.50e-01)"
    # outputs below 1 are held to rtol itself
    _, problem = fp16_gate(Classifier(), ref / 10, ref / 10 + 0.02, 0.8, 0.8, rtol=0.01)
    assert problem == "max |Δ| = 2.00e-02 (limit 1.00e-02)"
    broken = ref.copy()
    broken[1, 0] = np.nan  # overflow in float16 arithmetic; NaN compares as "within" any tolerance
    parity, problem = fp16_gate(Classifier(), ref, broken, 0.8, 0.8, rtol=0.05)
    assert not parity["gate_passed"] and problem is not None and "max_abs_diff is nan" in problem


class TinyTask(Classifier):
    """What fp16_variant asks of a task: its runner's hooks, metrics and name."""

    metric = "accuracy"

    class recipe:  # stands in for the Recipe
        name = "tiny"

    def collect_outputs(self, outputs):
        return np.concatenate(outputs)

    def metrics(self, outputs, targets, label_names):
        return {"accuracy": float((outputs.argmax(-1) == targets).mean()), "n": len(targets)}


def test_fp16_variant_is_served_on_gpus_when_it_passes(tmp_path):
    import torch

    mlp(tmp_path / "model.onnx")
    x = inputs(64)
    batches = [({"x": torch.from_numpy(x[:32])}, None), ({"x": torch.from_numpy(x[32:])}, None)]
    fp32 = cpu_session(tmp_path / "model.onnx").run(["logits"], {"x": x})[0]
    targets = fp32.argmax(-1)
    task = TinyTask()
    variant, reason = fp16_variant(task, tmp_path, batches, targets, [], fp32, 1.0, rtol=0.01)
    assert variant.file == FP16_FILE and variant.precision == "fp16" and (tmp_path / FP16_FILE).is_file()
    assert variant.parity["gate_passed"] and variant.metrics == {"accuracy": 1.0, "n": 64.0}
    assert reason.startswith("fp16 on GPU: vs fp32 on test max |Δ| ") and "argmax equal" in reason
    assert reason.endswith(f"(limit {variant.parity['limit']:.2e}: 1% of the largest fp32 output)")
    assert "CPU provider" in variant.note

    # a logit of -1e30 comes out as float16's -65504: the gate sees it
    mlp(tmp_path / "model.onnx", fill=True)
    fp32 = cpu_session(tmp_path / "model.onnx").run(["logits"], {"x": x})[0]
    variant, reason = fp16_variant(task, tmp_path, batches, targets, [], fp32, 1.0, rtol=0.01)
    assert not variant.parity["gate_passed"]
    assert reason == (
        "fp32 on GPU: fp16 differs from fp32 on test (max |Δ| = 1.00e+30 (limit 1.00e+28); "
        "limit 1.00e+28: 1% of the largest fp32 output)"
    )


def test_fp16_variant_the_cpu_cannot_run_is_kept_unchecked_and_not_served(tmp_path, monkeypatch):
    import training.fp16

    def cannot(path):
        raise RuntimeError("NOT_IMPLEMENTED: Could not find an implementation for Foo(1) node")

    monkeypatch.setattr(training.fp16, "onnx_runner", cannot)
    mlp(tmp_path / "model.onnx")
    variant, reason = fp16_variant(TinyTask(), tmp_path, [], None, [], None, 1.0, rtol=0.01)
    assert variant.parity == {"gate_passed": False} and "not checked" in variant.note
    assert reason == (
        "fp32 on GPU: fp16 could not be checked on the CPU (RuntimeError: NOT_IMPLEMENTED: "
        "Could not find an implementation for Foo(1) node)"
    )


# --- I/O binding -------------------------------------------------------------------------------


def test_bound_session_answers_like_session_run(tmp_path, caplog):
    """The run GPU sessions use (inputs bound from numpy, outputs copied back after the run), here on
    the CPU provider: the same outputs as `session.run`, in the order asked for."""
    mlp(tmp_path / "model.onnx")
    session = cpu_session(tmp_path / "model.onnx")
    bound = BoundSession(session, device_type="cpu")
    x = inputs(16)
    expected = session.run(None, {"x": x})
    with caplog.at_level(logging.INFO, logger="serving.sessions"):
        got = bound.run(None, {"x": x})
        bound.run(None, {"x": x})
    assert [m for m in caplog.messages if m.startswith("first run on CPUExecutionProvider")] != []
    assert len([m for m in caplog.messages if m.startswith("first run")]) == 1
    assert len(got) == 2 and all(np.array_equal(a, b) for a, b in zip(got, expected))
    (probs,) = bound.run(["probs"], {"x": x})
    assert np.array_equal(probs, expected[1])
    reordered = bound.run(["probs", "logits"], {"x": x})
    assert np.array_equal(reordered[0], expected[1]) and np.array_equal(reordered[1], expected[0])
    # a strided view (a column slice) is copied into a contiguous buffer before it is bound
    wide = np.concatenate([x, x], axis=1)[:, ::2]
    assert not wide.flags.c_contiguous
    assert np.array_equal(
        bound.run(None, {"x": wide})[0], session.run(None, {"x": np.ascontiguousarray(wide)})[0]
    )
    # everything else is the session's
    assert [i.name for i in bound.get_inputs()] == ["x"] and bound.get_providers() == [CPU]


def test_cpu_sessions_keep_session_run(tmp_path):
    mlp(tmp_path / "model.onnx")
    session, info = create_session(tmp_path / "model.onnx", threads=1, providers=[CPU])
    assert isinstance(session, ort.InferenceSession) and info.provider == CPU and info.fallbacks == []


# --- TensorRT and CUDA options -----------------------------------------------------------------


def test_trt_profile_covers_the_batch_limit_and_the_longest_sequence():
    text = [("input_ids", ["batch", "sequence"]), ("attention_mask", ["batch", "sequence"])]
    assert trt_profile(text, 128, 64) == {
        "trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1",
        "trt_profile_opt_shapes": "input_ids:128x64,attention_mask:128x64",
        "trt_profile_max_shapes": "input_ids:128x64,attention_mask:128x64",
    }
    assert (
        trt_profile([("images", ["batch", 3, 224, 224])], 32)["trt_profile_min_shapes"]
        == "images:1x3x224x224"
    )
    assert (
        trt_profile([("images", ["batch", 3, 224, 224])], 32)["trt_profile_max_shapes"]
        == "images:32x3x224x224"
    )
    # an axis without a known range: no profile, TensorRT sizes engines from what it sees
    assert trt_profile(text, 128, None) == {}
    assert trt_profile([("x", ["batch", "frames"])], 128) == {}


def test_provider_options(tmp_path):
    profile = trt_profile([("x", ["batch", 4])], 8)
    trt = provider_options("TensorrtExecutionProvider", tmp_path, 1, fp16=True, trt_profile=profile)
    assert trt["device_id"] == 1 and trt["trt_fp16_enable"] is True
    assert trt["trt_engine_cache_enable"] and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_timing_cache_enable"] and trt["trt_timing_cache_path"] == str(tmp_path)
    assert trt["trt_profile_max_shapes"] == "x:8x4"
    # an fp32 variant gets no float16 kernels: its fp16 twin may have failed its gate
    assert provider_options("TensorrtExecutionProvider", tmp_path)["trt_fp16_enable"] is False
    assert provider_options("CUDAExecutionProvider", tmp_path, 2) == {"device_id": 2}
    assert provider_options(CPU, tmp_path) == {}


def test_operators_tensorrt_cannot_take_run_on_cuda(tmp_path, monkeypatch):
    offered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: offered)
    chain = provider_chain("TensorrtExecutionProvider", tmp_path, 1, fp16=True)
    assert [p if isinstance(p, str) else p[0] for p in chain] == offered
    assert chain[0][1]["trt_fp16_enable"] and chain[1] == ("CUDAExecutionProvider", {"device_id": 1})
    assert provider_chain("CUDAExecutionProvider", tmp_path, 1) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        CPU,
    ]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", CPU])
    assert [
        p if isinstance(p, str) else p[0] for p in provider_chain("TensorrtExecutionProvider", tmp_path)
    ] == [
        "TensorrtExecutionProvider",
        CPU,
    ]


def test_gpu_batches_have_their_own_limit(monkeypatch):
    for name in ("MAX_BATCH", "MAX_BATCH_IMAGE", "MAX_BATCH_GPU"):
        monkeypatch.delenv(f"TUNESERVE_{name}", raising=False)
    settings = Settings()
    assert [settings.batch_limit(m, "gpu") for m in ("image", "text", "audio")] == [128] * 3
    assert settings.batch_limit("image", "cpu") == 1 and settings.batch_limit("text", "cpu") == 64
    monkeypatch.setenv("TUNESERVE_MAX_BATCH_GPU", "256")
    monkeypatch.setenv("TUNESERVE_MAX_BATCH", "16")
    settings = Settings()
    assert settings.batch_limit("image", "gpu") == 256 and settings.batch_limit("text", "cpu") == 16


def test_cuda_device_setting_leaves_tensorrt_out(monkeypatch):
    offered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: offered)
    assert sessions.candidate_providers("cuda") == ["CUDAExecutionProvider", CPU]
    assert sessions.candidate_providers("auto") == offered
    assert sessions.candidate_providers("cpu") == [CPU]


# --- falling back to the CPU -------------------------------------------------------------------


def repository_with_fp16(root: Path) -> Path:
    """A forecasting model whose GPU default is its fp16 variant and whose CPU default is fp32."""
    folder = root / "series-mlp"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    window, horizon = 48, 8
    params = {
        "w": rng.normal(0, 0.1, (window, horizon * 3)).astype(np.float32),
        "shape": np.array([-1, horizon, 3], dtype=np.int64),
    }
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["history", "w"], ["flat"]),
            helper.make_node("Reshape", ["flat", "shape"], ["quantiles"]),
        ],
        "series",
        [helper.make_tensor_value_info("history", TensorProto.FLOAT, ["batch", window])],
        [helper.make_tensor_value_info("quantiles", TensorProto.FLOAT, ["batch", horizon, 3])],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    convert_fp16(folder / "model.onnx", folder / FP16_FILE)
    manifest = series_manifest(
        folder.name,
        window,
        horizon,
        {"kind": "series", "window": window, "horizon": horizon, "max_gap": 3},
        fp32="model.onnx",
        fp16=FP16_FILE,
    )
    write_manifest(folder, manifest)
    load_manifest(folder, verify=True)
    return root


@pytest.fixture
def fresh_probes(monkeypatch):
    """Forget which providers failed earlier in this process, so each test probes them anew."""
    monkeypatch.setattr(sessions, "_unusable", {})
    monkeypatch.setattr(sessions, "_working", set())


def forecast(model) -> list[float]:
    from serving.tasks.forecasting import ForecastRequest

    history = [float(np.sin(i / 4)) + 2 for i in range(60)]
    return model.task.predict(ForecastRequest(model=model.name, history=history))["forecast"]


def test_auto_without_gpu_providers_in_the_build_serves_the_cpu_variant_and_says_why(
    tmp_path, monkeypatch, fresh_probes
):
    """onnxruntime's CPU-only build: no GPU provider to try."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    runtime = Runtime(Settings(repository=repository_with_fp16(tmp_path), device="auto", threads=1))
    model = runtime.models["series-mlp"]
    assert model.variant == "fp32" and model.session_info.provider == CPU
    assert model.public()["provider_fallbacks"] == [
        "this onnxruntime build has no GPU provider (CPUExecutionProvider)"
    ]
    assert isinstance(model.task.session, ort.InferenceSession) and len(forecast(model)) == 8


@pytest.mark.skipif(HAS_GPU, reason="checks the fallback on a machine without a GPU")
def test_auto_with_failing_gpu_providers_serves_the_cpu_variant_and_says_why(tmp_path, fresh_probes):
    """onnxruntime-gpu (this project's build on Linux x86-64) on a machine without a usable GPU: the
    fp16 variant is tried on each GPU provider, each fails, and the CPU serves its own variant."""
    tried = [
        p
        for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
        if p in ort.get_available_providers()
    ]
    if not tried:
        pytest.skip("this onnxruntime build has no GPU provider to fail")
    repository = repository_with_fp16(tmp_path)
    model = Runtime(Settings(repository=repository, device="auto", threads=1)).models["series-mlp"]
    assert model.variant == "fp32" and model.session_info.provider == CPU
    reasons = model.public()["provider_fallbacks"]
    assert [r.split(":")[0] for r in reasons] == tried and all("did not initialise" in r for r in reasons)
    assert isinstance(model.task.session, ort.InferenceSession) and len(forecast(model)) == 8
    # the next model skips the providers that failed, and says so
    again = Runtime(Settings(repository=repository, device="auto", threads=1)).models["series-mlp"]
    assert all("skipped (did not initialise" in r for r in again.public()["provider_fallbacks"])
    # TUNESERVE_DEVICE=cpu never tries them
    cpu = Runtime(Settings(repository=repository, device="cpu", threads=1)).models["series-mlp"]
    assert cpu.public()["provider_fallbacks"] == ["TUNESERVE_DEVICE=cpu"] and cpu.variant == "fp32"


def test_fp16_variant_serves_on_the_cpu_when_asked(tmp_path, fresh_probes):
    repository = repository_with_fp16(tmp_path)
    answers = {
        variant: forecast(
            Runtime(Settings(repository=repository, device="cpu", variant=variant, threads=1)).models[
                "series-mlp"
            ]
        )
        for variant in ("fp32", "fp16")
    }
    assert np.allclose(answers["fp16"], answers["fp32"], rtol=1e-2, atol=1e-2)
