"""The Open Inference Protocol over gRPC, against a real server with TUNESERVE_GRPC_PORT set, with a
client nobody here wrote: `tritonclient.grpc`. Every task's model answers what v1 answers; errors
come back as gRPC status codes with the protocol's message."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from serving.protocols.tensors import output_specs
from serving.protocols.v2 import sample_tensors
from serving.tasks import TASKS
from tests.conftest import free_port, start_server
from tests.test_v2 import _labels, assert_outputs_equal, model_for, v1_answer


@pytest.fixture(scope="module")
def grpc_server(tiny_repository, tmp_path_factory):
    port = free_port()
    with start_server(
        tiny_repository, tmp_path_factory.mktemp("grpc"), TUNESERVE_GRPC_PORT=str(port)
    ) as running:
        yield running.url, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(grpc_server):
    with triton.InferenceServerClient(grpc_server[1]) as c:
        yield c


def test_health_and_metadata(client, grpc_server):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata(as_json=True)["name"] == "tuneserve"
    meta = client.get_model_metadata("intent", as_json=True)
    rest = httpx.get(grpc_server[0] + "/v2/models/intent").json()
    assert meta["name"] == "intent" and [i["name"] for i in meta["inputs"]] == [
        i["name"] for i in rest["inputs"]
    ]
    assert [o["datatype"] for o in meta["outputs"]] == [o["datatype"] for o in rest["outputs"]]
    assert client.is_model_ready("intent") and not client.is_model_ready("no-such-model")


@pytest.mark.parametrize("task_name", list(TASKS))
def test_inference_answers_what_v1_answers(client, grpc_server, task_name):
    http, _ = grpc_server
    task, model = TASKS[task_name], model_for(task_name)
    (sample,) = task.samples(1, model)
    arrays, parameters = sample_tensors(task, sample)
    inputs = []
    for name, values in arrays.items():
        tensor = triton.InferInput(name, list(values.shape), "BYTES" if values.dtype == object else "FP32")
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    result = client.infer(model, inputs, parameters=parameters or None)
    assert_outputs_equal(result, output_specs(task, _labels(http, model)), v1_answer(http, task, sample))


def _texts(values: list[bytes], name: str = "texts", datatype: str = "BYTES") -> triton.InferInput:
    tensor = triton.InferInput(name, [len(values)], datatype)
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_ if datatype == "BYTES" else np.float32))
    return tensor


@pytest.mark.parametrize(
    "model,tensor,outputs,status,needle",
    [
        ("no-such-model", _texts([b"hi"]), None, "NOT_FOUND", "unknown model"),
        ("intent", _texts([b"hi"], name="words"), None, "INVALID_ARGUMENT", "unknown input 'words'"),
        ("intent", _texts([1.0], datatype="FP32"), None, "INVALID_ARGUMENT", "datatype FP32"),
        ("intent", _texts([b"\xff\xfe"]), None, "INVALID_ARGUMENT", "not UTF-8"),
        ("intent", _texts([b"hi"]), ["logits"], "INVALID_ARGUMENT", "unknown output 'logits'"),
    ],
)
def test_bad_requests_get_the_right_status(client, model, tensor, outputs, status, needle):
    with pytest.raises(InferenceServerException) as caught:
        client.infer(
            model, [tensor], outputs=[triton.InferRequestedOutput(o) for o in outputs] if outputs else None
        )
    assert caught.value.status() == f"StatusCode.{status}" and needle in caught.value.message()
    assert client.is_server_ready()
