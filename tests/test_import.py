"""`tuneserve import`: ONNX models made here with `onnx.helper`, imported with the real command,
served by the real runtime (in-process, and by a real BentoML server), answering on the v2 protocol
exactly what ONNX Runtime answers when called directly; an imported image classifier answers on the
v1 image route with the server's own pre-processing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper

from serving.app import create_app, create_v2_app
from serving.manifest import load_manifest
from serving.runtime import Runtime
from serving.server import ModelServer
from serving.settings import Settings
from tests.conftest import start_server
from tests.test_task_contract import graph_file
from training.cli import main

rng = np.random.default_rng(11)


def save(path: Path, nodes: list, inputs: list, outputs: list, params: dict[str, np.ndarray]) -> Path:
    graph_file(path, nodes, inputs, outputs, params)
    return path


def mlp(path: Path, seed: int = 11) -> Path:
    """features float32 [batch, 8] → hidden (tanh) → scores [batch, 3]; and counts int64 [batch] → twice.
    Weights of its own generator: a test's model does not depend on which tests ran before it."""
    weights = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["features", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Tanh", ["hb"], ["t"]),
        helper.make_node("MatMul", ["t", "w2"], ["scores"]),
        helper.make_node("Add", ["counts", "counts"], ["doubled"]),
    ]
    inputs = [
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8]),
        helper.make_tensor_value_info("counts", TensorProto.INT64, ["batch"]),
    ]
    outputs = [
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3]),
        helper.make_tensor_value_info("doubled", TensorProto.INT64, ["batch"]),
    ]
    params = {
        "w1": weights.normal(0, 1, (8, 16)).astype(np.float32),
        "b1": weights.normal(0, 1, 16).astype(np.float32),
        "w2": weights.normal(0, 1, (16, 3)).astype(np.float32),
    }
    return save(path, nodes, inputs, outputs, params)


def sequence_model(path: Path) -> Path:
    """ids int64 [batch, seq] → per-token embeddings [batch, seq, 4] and their masked mean [batch, 4]
    (id 0 is padding): an answer that must not change when a row is padded beside longer ones."""
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["tokens"]),
        helper.make_node("Greater", ["ids", "zero"], ["real"]),
        helper.make_node("Cast", ["real"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Div", ["total", "count"], ["pooled"]),
    ]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [
        helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "seq", 4]),
        helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4]),
    ]
    params = {
        "table": rng.normal(0, 1, (20, 4)).astype(np.float32),
        "zero": np.array(0, dtype=np.int64),
        "axis1": np.array([1], dtype=np.int64),
        "axis2": np.array([2], dtype=np.int64),
    }
    return save(path, nodes, inputs, outputs, params)


def image_classifier(path: Path, size: int) -> Path:
    """images float32 [batch, 3, size, size] → channel means → linear → probabilities [batch, 3]."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    return save(
        path,
        nodes,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        {"w": np.diag([4.0, 4.0, 4.0]).astype(np.float32)},  # the brightest channel wins
    )


def direct(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime's answer on the file with the server's session options (with ONNX Runtime's
    defaults, INT8 products saturate on x86 CPUs without VNNI: test_sessions_and_batching.py)."""
    from serving.sessions import session_options

    session = onnxruntime.InferenceSession(
        str(path), sess_options=session_options(1), providers=["CPUExecutionProvider"]
    )
    return {o.name: v for o, v in zip(session.get_outputs(), session.run(None, feeds))}


def v2_body(feeds: dict[str, np.ndarray]) -> dict:
    datatypes = {"float32": "FP32", "int64": "INT64", "float64": "FP64", "int32": "INT32"}
    return {
        "inputs": [
            {
                "name": k,
                "shape": list(v.shape),
                "datatype": datatypes[v.dtype.name],
                "data": v.ravel().tolist(),
            }
            for k, v in feeds.items()
        ]
    }


def outputs_of(body: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["outputs"]}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("import")
    repo = folder / "repository"
    mlp(folder / "mlp.onnx")
    sequence_model(folder / "seq.onnx")
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    assert (
        main(
            [
                "import",
                "mlp",
                "--onnx",
                str(folder / "mlp.onnx"),
                "--licence",
                "MIT",
                "--source",
                "https://example.org/mlp",
                "--metrics",
                str(folder / "metrics.json"),
                "--repository",
                str(repo),
                "-q",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "import",
                "seq",
                "--onnx",
                str(folder / "seq.onnx"),
                "--pad",
                "ids=0",
                "--repository",
                str(repo),
                "-q",
            ]
        )
        == 0
    )
    return repo


def serve(repo: Path, calls) -> object:
    settings = Settings(repository=repo, device="cpu", threads=1, cache=repo.parent / "cache", max_wait_ms=20)
    runtime = Runtime(settings)
    assert not runtime.broken, runtime.broken

    async def run() -> object:
        server = ModelServer(settings, runtime)
        try:
            v1, v2 = create_app(server, settings), create_v2_app(server, settings)

            async def app(scope, receive, send) -> None:  # /v2/... to the v2 app, the rest to v1's
                await (v2 if scope.get("path", "").startswith("/v2") else v1)(scope, receive, send)

            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await calls(client)
        finally:
            server.close()

    return asyncio.run(run())


@pytest.mark.fast
def test_manifest_records_signature_source_and_files(repository: Path, tmp_path: Path) -> None:
    manifest = load_manifest(repository / "mlp")  # verifies every sha256
    assert manifest.task == "tensor" and manifest.modality == "tensor"
    assert [(s.name, s.dtype, s.shape) for s in manifest.signature.inputs] == [
        ("features", "float32", ["batch", 8]),
        ("counts", "int64", ["batch"]),
    ]
    assert [s.name for s in manifest.signature.outputs] == ["scores", "doubled"]
    assert manifest.source["licence"] == "MIT" and manifest.source["url"] == "https://example.org/mlp"
    assert manifest.source["sha256"] == manifest.files["model.onnx"].sha256  # copied byte for byte
    assert manifest.metrics == {"accuracy": 0.9}
    assert load_manifest(repository / "seq").preprocessing == {"pad": {"ids": 0.0}}


@pytest.mark.fast
def test_v2_answers_equal_direct_onnx_runtime(repository: Path) -> None:
    feeds = {"features": rng.normal(0, 1, (5, 8)).astype(np.float32), "counts": np.arange(5, dtype=np.int64)}
    expected = direct(repository / "mlp" / "model.onnx", feeds)

    async def calls(client: httpx.AsyncClient) -> list[httpx.Response]:
        meta = await client.get("/v2/models/mlp")
        # concurrent requests of one row each share batches; each answer is its own row's
        rows = [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(5)]
        answers = await asyncio.gather(*(client.post("/v2/models/mlp/infer", json=v2_body(r)) for r in rows))
        return [meta, await client.post("/v2/models/mlp/infer", json=v2_body(feeds)), *answers]

    meta, whole, *single = serve(repository, calls)
    assert meta.json()["inputs"] == [
        {"name": "features", "datatype": "FP32", "shape": [-1, 8]},
        {"name": "counts", "datatype": "INT64", "shape": [-1]},
    ]
    assert whole.status_code == 200, whole.text
    got = outputs_of(whole.json())
    assert got["scores"].shape == (5, 3) and np.abs(got["scores"] - expected["scores"]).max() <= 1e-5
    assert got["doubled"].tolist() == expected["doubled"].tolist()
    for i, r in enumerate(single):
        assert r.status_code == 200, r.text
        assert np.abs(outputs_of(r.json())["scores"] - expected["scores"][i : i + 1]).max() <= 1e-5


@pytest.mark.fast
def test_padded_rows_answer_as_alone(repository: Path) -> None:
    short, long = np.array([[3, 4]], np.int64), np.array([[5, 6, 7, 8, 9]], np.int64)
    path = repository / "seq" / "model.onnx"

    async def calls(client: httpx.AsyncClient) -> list[httpx.Response]:
        return await asyncio.gather(
            *(client.post("/v2/models/seq/infer", json=v2_body({"ids": ids})) for ids in [short, long] * 3)
        )

    for ids, response in zip([short, long] * 3, serve(repository, calls)):
        assert response.status_code == 200, response.text
        got, alone = outputs_of(response.json()), direct(path, {"ids": ids})
        assert got["tokens"].shape == alone["tokens"].shape  # cut back from the padded batch
        for name in ("tokens", "pooled"):
            assert np.abs(got[name] - alone[name]).max() <= 1e-5


@pytest.mark.fast
def test_mismatched_tensors_are_400s_naming_the_input(repository: Path) -> None:
    good = {"features": np.zeros((2, 8), np.float32), "counts": np.zeros(2, np.int64)}
    cases = {
        "dtype": ({**good, "features": np.zeros((2, 8), np.float64)}, "features"),
        "width": ({**good, "features": np.zeros((2, 7), np.float32)}, "features"),
        "rank": ({**good, "counts": np.zeros((2, 1), np.int64)}, "counts"),
        "rows": ({**good, "counts": np.zeros(3, np.int64)}, "batch"),
        "missing": ({"features": good["features"]}, "counts"),
    }

    async def calls(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
        out = {
            name: await client.post("/v2/models/mlp/infer", json=v2_body(f)) for name, (f, _) in cases.items()
        }
        fractional = v2_body(good)
        fractional["inputs"][1]["data"] = [1.5, 2.0]
        out["fractional"] = await client.post("/v2/models/mlp/infer", json=fractional)
        out["unknown"] = await client.post(
            "/v2/models/mlp/infer",
            json={"inputs": [*v2_body(good)["inputs"], {**v2_body(good)["inputs"][1], "name": "x"}]},
        )
        out["out of range"] = await client.post(
            "/v2/models/seq/infer", json=v2_body({"ids": np.array([[3, 99]], np.int64)})
        )
        out["v1"] = await client.post("/text/classify", json={"model": "mlp", "texts": ["hello"]})
        return out

    responses = serve(repository, calls)
    for name, (_, word) in cases.items():
        r = responses[name]
        assert r.status_code == 400 and word in r.json()["error"], (name, r.status_code, r.text)
    assert responses["unknown"].status_code == 400 and "'x'" in responses["unknown"].json()["error"]
    assert (
        responses["fractional"].status_code == 400 and "integers" in responses["fractional"].json()["error"]
    )
    assert responses["out of range"].status_code == 400, responses["out of range"].text
    v1 = responses["v1"]
    assert v1.status_code == 400 and "/v2/models/mlp/infer" in v1.json()["error"], v1.text


@pytest.mark.fast
def test_import_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    image_classifier(tmp_path / "cls.onnx", 32)
    (tmp_path / "labels.txt").write_text("red\ngreen\n")  # the graph has 3 outputs
    repo = tmp_path / "repository"
    assert main(["import", "bad", "--onnx", str(tmp_path / "cls.onnx"), "--task", "image-classification",
                 "--labels", str(tmp_path / "labels.txt"), "--repository", str(repo), "-q"]) == 2  # fmt: skip
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    assert (
        main(["import", "junk", "--onnx", str(tmp_path / "junk.onnx"), "--repository", str(repo), "-q"]) == 2
    )
    assert (
        main(["import", "../up", "--onnx", str(tmp_path / "cls.onnx"), "--repository", str(repo), "-q"]) == 2
    )
    assert not repo.exists() or not any(repo.iterdir())  # nothing half-written


@pytest.mark.fast
def test_imported_classifier_on_the_image_route(tmp_path: Path) -> None:
    import cv2

    image_classifier(tmp_path / "cls.onnx", 32)
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    repo = tmp_path / "repository"
    for name, colour in (("rgb", "RGB"), ("bgr", "BGR")):
        assert main(["import", name, "--onnx", str(tmp_path / "cls.onnx"), "--task", "image-classification",
                     "--labels", str(tmp_path / "labels.txt"), "--preprocessing", "mean=0.5", "std=0.25",
                     "pixels=1", f"colour={colour}", "outputs=probabilities", "--repository", str(repo), "-q"]) == 0  # fmt: skip
    manifest = load_manifest(repo / "rgb")
    assert manifest.preprocessing["crop"] == 32 and manifest.preprocessing["mean"] == pytest.approx(127.5)
    red = np.zeros((40, 50, 3), np.uint8)
    red[..., 2] = 250  # BGR for OpenCV: a red image
    _, png = cv2.imencode(".png", red)

    async def calls(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
        return {
            name: await client.post(
                "/image/classify",
                files=[("images", ("red.png", png.tobytes(), "image/png"))],
                data={"model": name},
            )
            for name in ("rgb", "bgr")
        }

    answers = serve(repo, calls)
    rgb, bgr = answers["rgb"].json()["predictions"][0], answers["bgr"].json()["predictions"][0]
    assert rgb["label"] == "red" and bgr["label"] == "blue"  # the model sees the channels in its order
    assert sum(r["score"] for r in rgb["top_k"]) == pytest.approx(1.0, abs=1e-5)  # no second softmax
    # the same probabilities as ONNX Runtime on the same pre-processing
    from serving.processing.image import ImagePreprocessor, decode_image

    pixels = ImagePreprocessor.from_config(manifest.preprocessing)(decode_image(png.tobytes()))
    expected = direct(repo / "rgb" / "model.onnx", {"images": pixels[None]})["probs"][0]
    assert rgb["score"] == pytest.approx(float(expected.max()), abs=1e-5)


def test_round_trip_through_a_real_server(repository: Path, tmp_path: Path) -> None:
    """The imported model served by `bentoml serve`: v2 JSON and binary tensors equal ONNX Runtime."""
    import tritonclient.http as triton

    feeds = {"features": rng.normal(0, 1, (4, 8)).astype(np.float32), "counts": np.arange(4, dtype=np.int64)}
    expected = direct(repository / "mlp" / "model.onnx", feeds)
    with start_server(repository, tmp_path) as server:
        r = httpx.post(server.url + "/v2/models/mlp/infer", json=v2_body(feeds), timeout=30)
        assert r.status_code == 200, r.text
        assert np.abs(outputs_of(r.json())["scores"] - expected["scores"]).max() <= 1e-5
        with triton.InferenceServerClient(server.url.removeprefix("http://")) as client:
            inputs = []
            for name, value in feeds.items():
                tensor = triton.InferInput(
                    name, list(value.shape), "FP32" if value.dtype == np.float32 else "INT64"
                )
                tensor.set_data_from_numpy(value, binary_data=True)
                inputs.append(tensor)
            result = client.infer("mlp", inputs)
        assert np.abs(result.as_numpy("scores") - expected["scores"]).max() <= 1e-5
        assert result.as_numpy("doubled").tolist() == expected["doubled"].tolist()
        bad = httpx.post(
            server.url + "/v2/models/mlp/infer",
            json=v2_body({**feeds, "features": feeds["features"][:, :5].copy()}),
            timeout=30,
        )
        assert bad.status_code == 400 and "features" in bad.json()["error"]


@pytest.mark.fast
def test_static_int8_from_calibration_inputs_is_gated_against_fp32(tmp_path: Path) -> None:
    mlp(tmp_path / "mlp.onnx")
    calibration = {
        "features": np.random.default_rng(12).normal(0, 1, (32, 8)).astype(np.float32),
        "counts": np.arange(32, dtype=np.int64),
    }
    np.savez(tmp_path / "calibration.npz", **calibration)
    repo = tmp_path / "repository"
    for name, tolerance in (("loose", "0.2"), ("strict", "1e-9")):
        assert main(["import", name, "--onnx", str(tmp_path / "mlp.onnx"), "--calibration",
                     str(tmp_path / "calibration.npz"), "--int8-tolerance", tolerance,
                     "--repository", str(repo), "-q"]) == 0  # fmt: skip
    loose, strict = load_manifest(repo / "loose"), load_manifest(repo / "strict")
    assert loose.variants["int8"].parity["gate_passed"] and loose.default_variant["cpu"] == "int8"
    assert not strict.variants["int8"].parity["gate_passed"] and strict.default_variant["cpu"] == "fp32"
    assert loose.default_variant["gpu"] == "fp32" and "model.int8.onnx" in loose.files
    # the served INT8 answers what ONNX Runtime answers on the INT8 file
    expected = direct(repo / "loose" / "model.int8.onnx", {k: v[:3] for k, v in calibration.items()})

    async def calls(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(
            "/v2/models/loose/infer", json=v2_body({k: v[:3] for k, v in calibration.items()})
        )

    response = serve(repo, calls)
    assert np.abs(outputs_of(response.json())["scores"] - expected["scores"]).max() <= 1e-5


def test_torchscript_import_is_exported_and_checked(tmp_path: Path) -> None:
    import torch

    class Scaler(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x @ torch.ones(6, 2)) * 0.5

    example = rng.normal(0, 1, (2, 6)).astype(np.float32)
    torch.jit.trace(Scaler(), torch.from_numpy(example)).save(str(tmp_path / "scaler.ts"))
    np.save(tmp_path / "x.npy", example)
    repo = tmp_path / "repository"
    assert main(["import", "scaler", "--torchscript", str(tmp_path / "scaler.ts"), "--example-input",
                 str(tmp_path / "x.npy"), "--repository", str(repo), "-q"]) == 0  # fmt: skip
    manifest = load_manifest(repo / "scaler")
    assert manifest.source["kind"] == "torchscript"
    assert manifest.variants["fp32"].parity["max_abs_diff_vs_torchscript"] <= 1e-5
    assert [(s.name, s.shape) for s in manifest.signature.inputs] == [("x", ["batch", 6])]
    rows = rng.normal(0, 1, (5, 6)).astype(np.float32)  # another batch size than the example's
    got = direct(repo / "scaler" / "model.onnx", {"x": rows})["output"]
    assert np.abs(got - np.maximum(rows @ np.ones((6, 2)), 0) * 0.5).max() <= 1e-5
    assert (
        main(
            ["import", "again", "--torchscript", str(tmp_path / "scaler.ts"), "--repository", str(repo), "-q"]
        )
        == 2
    )


@pytest.mark.fast
def test_predict_reads_npz_inputs_without_a_server(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feeds = {"features": rng.normal(0, 1, (3, 8)).astype(np.float32), "counts": np.arange(3, dtype=np.int64)}
    np.savez(tmp_path / "inputs.npz", **feeds)
    assert main(["predict", "mlp", str(tmp_path / "inputs.npz"), "--repository", str(repository)]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = direct(repository / "mlp" / "model.onnx", feeds)
    assert printed["model"] == "mlp" and printed["variant"] == "fp32"
    assert np.abs(outputs_of(printed)["scores"] - expected["scores"]).max() <= 1e-5
    np.savez(tmp_path / "wrong.npz", features=feeds["features"].astype(np.float64), counts=feeds["counts"])
    assert main(["predict", "mlp", str(tmp_path / "wrong.npz"), "--repository", str(repository)]) == 2
    assert "features" in capsys.readouterr().err
