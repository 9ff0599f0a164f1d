import asyncio
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from serving.batching import MicroBatcher
from serving.errors import Overloaded
from serving.sessions import CPU, GPU_PROVIDERS, candidate_providers, create_session

HAS_GPU = shutil.which("nvidia-smi") is not None


def test_candidates_follow_trt_cuda_cpu_order_from_available():
    available = ort.get_available_providers()
    candidates = candidate_providers("auto")
    assert candidates[-1] == CPU
    order = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    assert candidates[:-1] == order
    assert candidate_providers("cpu") == [CPU]


@pytest.mark.skipif(HAS_GPU, reason="checks the fallback on a machine without a GPU")
def test_gpu_providers_fall_back_to_cpu_with_reasons(tiny_repository):
    model = tiny_repository / "intent" / "model.onnx"
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    session, info = create_session(model, threads=1, providers=wanted)
    assert info.provider == CPU and info.device == "cpu"
    assert session.get_providers() == [CPU]
    tried = [p for p in wanted[:2] if p in ort.get_available_providers()]
    assert len(info.fallbacks) == len(tried)
    # the session works after the fallback
    ids = np.array([[101, 7592, 102]], dtype=np.int64)
    (logits,) = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert logits.shape == (1, 10)
    assert GPU_PROVIDERS.isdisjoint(session.get_providers())


def _run(coro):
    return asyncio.run(coro)


def test_batcher_merges_concurrent_requests_and_keeps_order():
    calls = []

    def fn(items):
        calls.append(len(items))
        return [x * 10 for x in items]

    async def main():
        b = MicroBatcher(fn, max_batch_size=64, max_wait_ms=20)
        results = await asyncio.gather(*[b.submit([i, i + 1000]) for i in range(50)])
        b.close()
        return results, b.stats

    results, stats = _run(main())
    assert results == [[i * 10, (i + 1000) * 10] for i in range(50)]
    assert sum(calls) == 100 and max(calls) > 1 and max(calls) <= 64
    assert stats.mean_batch_size > 1


def test_batcher_failure_affects_only_its_batch():
    def fn(items):
        if "boom" in items:
            raise RuntimeError("bad batch")
        return [s.upper() for s in items]

    async def main():
        b = MicroBatcher(fn, max_batch_size=1, max_wait_ms=0)
        out = await asyncio.gather(
            b.submit(["a"]), b.submit(["boom"]), b.submit(["c"]), return_exceptions=True
        )
        b.close()
        return out

    a, boom, c = _run(main())
    assert a == ["A"] and c == ["C"] and isinstance(boom, RuntimeError)


def test_batcher_refuses_when_queue_full():
    async def main():
        b = MicroBatcher(lambda items: items, max_queue=4)
        with pytest.raises(Overloaded):
            await b.submit(list(range(5)))
        assert await b.submit([1, 2]) == [1, 2]
        b.close()

    _run(main())


def test_image_batches_are_capped_on_the_cpu_only(monkeypatch):
    from serving.settings import Settings

    monkeypatch.setenv("TUNESERVE_MAX_BATCH", "64")
    monkeypatch.delenv("TUNESERVE_MAX_BATCH_IMAGE", raising=False)
    settings = Settings()
    assert settings.batch_limit("image", "cpu") == 1  # one image per call, several calls at once
    assert settings.batch_limit("image", "gpu") == settings.max_batch_gpu  # a limit of its own
    assert settings.batch_limit("text", "cpu") == 64
    monkeypatch.setenv("TUNESERVE_MAX_BATCH_IMAGE", "16")
    assert Settings().batch_limit("image", "cpu") == 16


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_batcher_runs_at_most_its_slots_at_once_and_keeps_every_answer_in_place(slots):
    import threading
    import time

    lock, running, most, sizes = threading.Lock(), [0], [0], []

    def fn(items):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            sizes.append(len(items))
        time.sleep(0.03)  # an ONNX Runtime call: the GIL is released while it runs
        with lock:
            running[0] -= 1
        return [x * 10 for x in items]

    async def main():
        b = MicroBatcher(fn, max_batch_size=4, max_wait_ms=1, slots=slots)
        results = await asyncio.gather(*[b.submit([i, i + 1000]) for i in range(40)])
        b.close()
        return results, b.stats

    results, stats = _run(main())
    assert results == [[i * 10, (i + 1000) * 10] for i in range(40)]
    assert most[0] == slots  # the slots are used, never exceeded
    assert max(sizes) == 4 and stats.items == 80  # batches still fill up while the slots are busy


def test_image_models_on_the_cpu_run_two_calls_at_once(monkeypatch):
    from serving.settings import Settings

    monkeypatch.delenv("TUNESERVE_IMAGE_SLOTS", raising=False)
    settings = Settings()
    assert settings.slots("image", "cpu") == 2
    assert settings.slots("image", "gpu") == 1 and settings.slots("text", "cpu") == 1
    monkeypatch.setenv("TUNESERVE_IMAGE_SLOTS", "1")
    assert Settings().slots("image", "cpu") == 1


FLUSH_SCRIPT = """
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

# threads made before any session runs: none may be left flushing denormals by one
ours, plain = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
ours.submit(lambda: None).result(), plain.submit(lambda: None).result()
x = {"x": np.array([1e-39, 1.0], np.float32)}  # made before a session sets the flags on this thread
assert x["x"][0] > 0
from serving.sessions import CPU, create_session

path = sys.argv[1]
session, _ = create_session(path, 1, [CPU])
bare = ort.InferenceSession(path, providers=[CPU])
print(ours.submit(lambda: float(session.run(None, x)[0][0])).result())
print(plain.submit(lambda: float(bare.run(None, x)[0][0])).result())
print(float(session.run(None, x)[0][0]))  # on this thread too, while it runs
print(float((x["x"] * np.float32(1.0))[0]))  # and after it, this thread computes denormals again
print(ours.submit(lambda: float((x["x"] * np.float32(1.0))[0])).result())
print(sys.float_info.min / 2)  # opening the sessions left this thread's doubles alone too
"""


def test_sessions_flush_denormals_on_the_thread_that_runs_them(tmp_path):
    """A denormal input reads as zero in a session's run on any thread (tuneserve's sessions set
    flush-to-zero and denormals-are-zero there while they run); a bare ONNX Runtime session on another
    thread keeps it, and so does the caller's own arithmetic after the run."""
    import subprocess
    import sys
    from pathlib import Path

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "one"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        tmp_path / "m.onnx",
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", FLUSH_SCRIPT, str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=120,
        check=True,
    ).stdout.split()
    assert float(out[0]) == 0.0
    assert float(out[1]) == np.float32(1e-39)
    assert float(out[2]) == 0.0
    assert float(out[3]) == np.float32(1e-39), "a session's run left the caller's thread flushing denormals"
    assert float(out[4]) == np.float32(1e-39)
    assert float(out[5]) > 0, "opening a session left the thread flushing denormals"


@pytest.mark.fast
def test_cpu_sessions_keep_the_residual_add_and_layer_norm_apart(tmp_path):
    """ONNX Runtime fuses a residual Add and the LayerNormalization after it into
    SkipLayerNormalization, whose CPU kernel is slower than the two nodes; the server's CPU sessions
    keep them apart (GPU chains fuse), with the same answer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from serving.sessions import CpuSession, session_options

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "residual"], ["s"]),
            helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 16]),
            helper.make_tensor_value_info("residual", TensorProto.FLOAT, ["b", "t", 16]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 16])],
        [
            numpy_helper.from_array(rng.normal(1, 0.1, 16).astype(np.float32), "gamma"),
            numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "beta"),
        ],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        tmp_path / "g.onnx",
    )
    feeds = {n: rng.normal(0, 1, (2, 5, 16)).astype(np.float32) for n in ("x", "residual")}

    def optimised(fuse: bool) -> tuple[set[str], np.ndarray]:
        options = session_options(1, fuse_skip_layernorm=fuse)
        options.optimized_model_filepath = str(tmp_path / f"optimised-{fuse}.onnx")
        y = CpuSession(str(tmp_path / "g.onnx"), options, providers=[CPU]).run(None, feeds)[0]
        return {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}, y

    served, y_served = optimised(False)
    fused, y_fused = optimised(True)
    assert "SkipLayerNormalization" in fused
    assert "SkipLayerNormalization" not in served and "LayerNormalization" in served
    np.testing.assert_allclose(y_served, y_fused, atol=1e-5)


@pytest.mark.fast
def test_int8_convolutions_are_exact_where_int8_products_would_saturate(tmp_path):
    """A quantised 1×1 convolution whose UINT8 activations and INT8 weights are both near their
    largest values: on x86 CPUs without VNNI, ONNX Runtime's default kernel adds pairs of such
    products in 16 bits and clips them (about half the answer here). The server's sessions give the
    exact integer result on every CPU (on VNNI CPUs the default kernel is exact too)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    channels, out = 64, 4
    weights = np.full((out, channels, 1, 1), 127, np.int8)
    weights[1] = -127
    weights[2, ::2] = 100
    initializers = [
        numpy_helper.from_array(np.array(6 / 255, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(weights, "w"),
        numpy_helper.from_array(np.full(out, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(out, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(1200 / 255, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"]),
        helper.make_node("QuantizeLinear", ["c", "y_scale", "y_zero"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out, 4, 4])],
        initializers,
    )
    path = tmp_path / "conv.int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    x = np.full((1, channels, 4, 4), 6.0, np.float32)
    session, _ = create_session(path, 1, [CPU])
    y = session.run(None, {"x": x})[0]
    exact = 6.0 * (weights.astype(np.float64) * 0.01).sum((1, 2, 3))  # 487.7, -487.7, 431.8, 487.7
    step = 1200 / 255
    assert np.abs(y - exact[None, :, None, None]).max() <= step / 2 + 1e-3, (y[0, :, 0, 0], exact)
