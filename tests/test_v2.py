"""The Open Inference Protocol (KServe v2) against a real server, with a client nobody here wrote:
`tritonclient.http`. Health, server and model metadata, and inference on every task's model with
binary tensor data on and off; every answer equals what v1 answers for the same input."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from serving.protocols.tensors import DTYPES, input_specs, output_specs
from serving.protocols.v2 import sample_tensors
from serving.tasks import TASKS, ServingTask
from serving.tasks.tabular import sample_rows

MODELS = {
    "text-classification": "intent",
    "token-classification": "entities",
    "image-classification": "surface-defects",
    "audio-classification": "keywords",
    "tabular-classification": "credit-risk",
    "forecasting": "energy-demand",
    "semantic-search": "faq-search",
    "ocr": "ocr",
    "image-segmentation": "defect-segmentation",
    "object-detection": "defect-detection",
}
# Tasks whose models the tiny repository has none of: a search model answers embeddings on v1, but
# over v2 it speaks search; the embedding tensors are checked in-process (tests/test_semantic_search.py).
SERVED_ELSEWHERE = {"text-embedding"}


def model_for(task_name: str) -> str:
    if task_name in SERVED_ELSEWHERE:
        pytest.skip(
            f"no {task_name} model in the tiny repository (v2 in-process: tests/test_semantic_search.py)"
        )
    return MODELS[task_name]


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(server.removeprefix("http://"), network_timeout=60) as c:
        yield c


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "tuneserve" and "binary_tensor_data" in meta["extensions"]


def test_every_model_has_metadata_and_readiness(client, server):
    models = httpx.get(server + "/v1/models").json()["models"]
    for m in models:
        meta = client.get_model_metadata(m["name"])
        assert meta["name"] == m["name"] and meta["versions"] == [m["version"]]
        assert client.is_model_ready(m["name"]) and client.is_model_ready(m["name"], m["version"])
        task = TASKS[m["task"]]
        inputs = [s.public() for s in input_specs(task)]
        assert meta["inputs"][: len(inputs)] == inputs
        columns = meta["inputs"][len(inputs) :]  # a table model also takes one typed tensor per feature
        assert all(c["datatype"] in ("FP32", "BYTES", "BOOL") and c["shape"] == [-1] for c in columns)
        assert bool(columns) == (m["task"] == "tabular-classification")
        assert meta["outputs"] == [s.public() for s in output_specs(task, m["labels"])]
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("no-such-model")
    assert not client.is_model_ready("intent", "999")


def v1_answer(server: str, task: type[ServingTask], sample) -> dict:
    if sample.json is not None:
        r = httpx.post(server + "/v1" + task.route, json=sample.json, timeout=60)
    else:
        r = httpx.post(
            server + "/v1" + task.route,
            files=[(task.file_field, f[:2]) for f in sample.files],
            data=dict(sample.fields),
            timeout=60,
        )
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("task_name", list(TASKS))
def test_inference_answers_what_v1_answers(client, server, task_name, binary):
    task, model = TASKS[task_name], model_for(task_name)
    (sample,) = task.samples(1, model)
    arrays, parameters = sample_tensors(task, sample, binary)
    inputs = [
        triton.InferInput(name, list(a.shape), "BYTES" if a.dtype == object else "FP32")
        for name, a in arrays.items()
    ]
    for tensor in inputs:
        tensor.set_data_from_numpy(arrays[tensor.name()], binary_data=binary)
    expected = v1_answer(server, task, sample)
    specs = output_specs(task, _labels(server, model))
    outputs = [triton.InferRequestedOutput(s.name, binary_data=binary) for s in specs]
    result = client.infer(model, inputs, outputs=outputs, parameters=parameters or None)
    assert result.get_response()["model_name"] == model
    assert_outputs_equal(result, specs, expected)


def assert_outputs_equal(result, specs, expected: dict) -> None:
    """Every output tensor of a tritonclient result (HTTP or gRPC) equals v1's answer for it."""
    for spec in specs:
        got, (want, shape) = result.as_numpy(spec.name), spec.extract(expected)
        assert got.shape == shape, spec.name
        if spec.datatype == "BYTES":
            assert [g if isinstance(g, bytes) else g.encode() for g in got.reshape(-1)] == [
                w.encode() for w in want
            ], spec.name
        else:
            np.testing.assert_allclose(
                got.reshape(-1).astype(DTYPES[spec.datatype]),
                np.array(want, dtype=DTYPES[spec.datatype]),
                rtol=0,
                atol=1e-4,
                err_msg=spec.name,
            )


def _labels(server: str, model: str) -> list[str]:
    return next(m["labels"] for m in httpx.get(server + "/v1/models").json()["models"] if m["name"] == model)


def test_all_outputs_in_binary_by_default(client):
    """tritonclient asks for every output in binary when it names none (`binary_data_output`)."""
    texts = np.array([b"I lost my card", b"what is my balance"], dtype=np.object_)
    tensor = triton.InferInput("texts", [2], "BYTES")
    tensor.set_data_from_numpy(texts)
    result = client.infer("intent", [tensor])
    assert result.as_numpy("label").shape == (2,) and result.as_numpy("scores").shape[0] == 2
    assert all("parameters" in o and "data" not in o for o in result.get_response()["outputs"])


@pytest.mark.parametrize(
    "body,headers,status,needle",
    [
        (
            {"inputs": [{"name": "texts", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
            {},
            400,
            "datatype FP32",
        ),
        (
            {"inputs": [{"name": "texts", "shape": [2], "datatype": "BYTES", "data": ["a"]}]},
            {},
            400,
            "holds 2 elements",
        ),
        (
            {"inputs": [{"name": "words", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
            {},
            400,
            "unknown input 'words'",
        ),
        (
            {
                "inputs": [{"name": "texts", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                "outputs": [{"name": "nope"}],
            },
            {},
            400,
            "unknown output 'nope'",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "texts",
                        "shape": [1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": 99},
                    }
                ]
            },
            {},
            400,
            "binary_data_size 99",
        ),
        (
            {
                "inputs": [{"name": "texts", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                "parameters": {"top_k": 3},
            },
            {},
            400,
            "unknown parameter",
        ),
        ({"inputs": []}, {}, 400, "inputs"),
        (
            {"inputs": [{"name": "texts", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
            {"Inference-Header-Content-Length": "100000"},
            400,
            "Inference-Header-Content-Length",
        ),
    ],
)
def test_bad_requests_are_4xx_with_the_protocol_error(server, body, headers, status, needle):
    r = httpx.post(
        server + "/v2/models/intent/infer",
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers},
    )
    assert r.status_code == status and needle in r.json()["error"], r.text


@pytest.mark.parametrize(
    "path,status",
    [("/v2/models/nope/infer", 404), ("/v2/models/intent/versions/7/infer", 404), ("/v2/nowhere", 404)],
)
def test_unknown_models_versions_and_paths_are_404(server, path, status):
    r = httpx.post(
        server + path, json={"inputs": [{"name": "texts", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
    )
    assert r.status_code == status and r.json()["error"], r.text


def test_v2_routes_are_documented_on_the_docs_page(server):
    paths = httpx.get(server + "/docs.json").json()["paths"]
    assert {
        "/v2",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    } <= paths.keys()


def feature_tensors(client, rows: list[dict], binary: bool) -> list[triton.InferInput]:
    """Rows as one typed tensor per feature of `credit-risk` (NaN for a missing number)."""
    kinds = {c["name"]: c["datatype"] for c in client.get_model_metadata("credit-risk")["inputs"][1:]}
    assert set(kinds) == set(rows[0])
    inputs = []
    for name, datatype in kinds.items():
        values = [row[name] for row in rows]
        if datatype == "FP32":
            array = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
        elif datatype == "BOOL":
            array = np.array(values, dtype=bool)
        else:
            array = np.array([v.encode() for v in values], dtype=np.object_)
        tensor = triton.InferInput(name, [len(rows)], datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_table_rows_as_typed_feature_tensors(client, server, binary):
    """A table model takes one typed tensor per feature (numbers FP32, NaN for missing; strings
    BYTES; booleans BOOL) instead of rows as JSON, and answers the same as v1."""
    rows = sample_rows(3)
    rows[1]["annual_income"] = None  # a feature the model imputes
    v1 = httpx.post(server + "/v1/tabular/predict", json={"model": "credit-risk", "rows": rows})
    assert v1.status_code == 200, v1.text
    wanted = ("label", "score", "scores")
    result = client.infer(
        "credit-risk",
        feature_tensors(client, rows, binary),
        outputs=[triton.InferRequestedOutput(n, binary_data=binary) for n in wanted],
    )
    specs = [
        s
        for s in output_specs(TASKS["tabular-classification"], _labels(server, "credit-risk"))
        if s.name in wanted
    ]
    assert_outputs_equal(result, specs, v1.json())
    rows[2]["delinquencies_2y"] = None  # a required feature missing is refused naming it, as on v1
    with pytest.raises(InferenceServerException, match=r"rows\[2\]\.delinquencies_2y"):
        client.infer("credit-risk", feature_tensors(client, rows, binary))


def test_rows_and_feature_tensors_together_are_refused(server):
    body = {
        "inputs": [
            {"name": "rows", "shape": [1], "datatype": "BYTES", "data": [json.dumps(sample_rows(1)[0])]},
            {"name": "age", "shape": [1], "datatype": "FP32", "data": [40.0]},
        ]
    }
    r = httpx.post(server + "/v2/models/credit-risk/infer", json=body)
    assert r.status_code == 400 and "not both" in r.json()["error"]
