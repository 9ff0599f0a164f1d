"""The Open Inference Protocol (KServe v2) over REST, for every model of the repository.

The tensors of each model come from its task (serving/protocols/tensors.py); an inference request
becomes the task's own request and runs through `ModelServer.infer`, so it shares the model's
batcher with v1 (a v1 and a v2 request may land in the same ONNX Runtime batch). JSON tensors and
the binary tensor data extension (`Inference-Header-Content-Length`, `binary_data_size`,
`binary_data` / `binary_data_output`) are both understood. Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import base64
import json
import math
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from serving.errors import RequestError, UnknownModel
from serving.protocols.bodies import (
    JSONResponse,
    describe_validation_error,
    loads,
    read_body,
    refuse_simple_types,
)
from serving.protocols.tensors import (
    InputSpec,
    OutputSpec,
    column_specs,
    decode_binary,
    decode_json,
    encode_binary,
    encode_json,
    input_specs,
    output_specs,
    parameter_names,
    signature_specs,
)
from serving.protocols.v1 import DirectRoute, ServerRef, bound, error_responses
from serving.tasks import FileRequest, FileTask, Sample, ServingTask, Upload
from serving.tasks.tensor import TensorRequest, TensorTask

if TYPE_CHECKING:
    from serving.runtime import LoadedModel
    from serving.server import ModelServer

HEADER_LENGTH = "inference-header-content-length"
# Request parameters clients send that concern the protocol, not the model.
PROTOCOL_PARAMETERS = {
    "binary_data_output",
    "priority",
    "timeout",
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "headers",
}
try:
    SERVER_VERSION = version("tuneserve")
except PackageNotFoundError:  # running from a source tree that is not installed
    SERVER_VERSION = "0"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InferInput(_Strict):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestedOutput(_Strict):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Strict):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class ModelTensors:
    """A loaded model's v2 view: its input and output tensors and the parameters its task reads."""

    def __init__(self, model: LoadedModel) -> None:
        task = type(model.task)
        self.task = task
        if issubclass(task, TensorTask):  # the model's own tensors, as its signature names them
            self.inputs, self.outputs = signature_specs(model.manifest.signature)
        else:
            self.inputs = input_specs(task)
            self.outputs = output_specs(task, model.manifest.labels)
        taken = {s.name for s in self.inputs}
        self.columns = [c for c in column_specs(model.task) if c.name not in taken]
        self.outputs_by_name = {s.name: s for s in self.outputs}
        self.parameters = parameter_names(task)

    def metadata(self, model: LoadedModel) -> dict[str, Any]:
        return {
            "name": model.name,
            "versions": [model.manifest.version],
            "platform": "onnxruntime_onnx",
            "inputs": [s.public() for s in self.inputs + self.columns],
            "outputs": [s.public() for s in self.outputs],
        }


def tensors_of(model: LoadedModel) -> ModelTensors:
    """The model's tensors, worked out once per loaded model."""
    view = model.views.get("v2")
    if view is None:
        view = model.views["v2"] = ModelTensors(model)
    return view


# --- request → the task's request -----------------------------------------------------------------


def parse_infer_body(raw: bytes, header_length: str | None) -> tuple[InferRequest, memoryview]:
    """The JSON header and the binary part after it (empty without the binary extension)."""
    view = memoryview(raw)
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(raw):
            raise RequestError(
                f"Inference-Header-Content-Length {header_length[:20]!r} is not a length within the {len(raw)}-byte body"
            )
        json_part, binary = view[: int(header_length)], view[int(header_length) :]
    else:
        json_part, binary = view, view[len(raw) :]
    if not bytes(json_part[:4096]).strip():
        raise RequestError("inference request is empty; expected a JSON object")
    data = loads(json_part)  # a 400 for invalid JSON and for a key given twice
    if not isinstance(data, dict):
        raise RequestError("inference request must be a JSON object")
    try:
        return InferRequest.model_validate(data), binary
    except ValidationError as exc:
        raise RequestError(describe_validation_error(exc)) from None


def input_values(request: InferRequest, binary: memoryview, specs: list[InputSpec]) -> dict[str, Any]:
    """Each input's flat values (BYTES as a list of bytes, numbers as an array), checked against
    the model's input tensors."""
    expected = {s.name: s for s in specs}
    values: dict[str, Any] = {}
    offset = 0
    for tensor in request.inputs:
        spec = expected.get(tensor.name)
        if spec is None:
            raise RequestError(f"unknown input {tensor.name!r}; the model takes {sorted(expected)}")
        if tensor.name in values:
            raise RequestError(f"input {tensor.name!r} given twice")
        if tensor.datatype != spec.datatype:
            raise RequestError(
                f"input {tensor.name!r}: datatype {tensor.datatype} does not match the model's {spec.datatype}"
            )
        if (
            len(tensor.shape) != len(spec.shape)
            or any(s < 0 for s in tensor.shape)
            or any(0 <= e != s for s, e in zip(tensor.shape, spec.shape))
        ):
            raise RequestError(
                f"input {tensor.name!r}: shape {tensor.shape} does not match the model's {list(spec.shape)}"
            )
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise RequestError(
                    f"input {tensor.name!r}: binary_data_size {size!r} runs past the {len(binary)} bytes of binary data"
                )
            if tensor.data is not None:
                raise RequestError(f"input {tensor.name!r}: give either data or binary_data_size, not both")
            array = decode_binary(binary[offset : offset + size], spec.datatype, tensor.name)
            offset += size
        elif tensor.data is not None:
            array = decode_json(tensor.data, spec.datatype, tensor.name)
            if spec.kind == "files":  # JSON strings cannot hold raw file bytes: they come base64-encoded
                array = [_base64(v, tensor.name, i) for i, v in enumerate(array)]
        else:
            raise RequestError(f"input {tensor.name!r}: no data and no binary_data_size")
        if len(array) != math.prod(tensor.shape):  # exact for any size (numpy's product would overflow)
            raise RequestError(
                f"input {tensor.name!r}: shape {tensor.shape} holds {math.prod(tensor.shape)} elements, the data {len(array)}"
            )
        values[tensor.name] = array
    if offset != len(binary):
        raise RequestError(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input's binary_data_size"
        )
    return values


def _base64(value: bytes, name: str, index: int) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise RequestError(
            f"input {name!r}[{index}]: files in JSON tensor data must be base64-encoded (or send binary data)"
        ) from None


def objects_from_columns(columns: list[InputSpec], values: dict[str, Any]) -> list[dict[str, Any]]:
    """Objects (table rows) from equally long column tensors: NaN for a missing number, as null."""
    lengths = {c.name: len(values[c.name]) for c in columns}
    if len(set(lengths.values())) > 1:
        raise RequestError(f"column tensors differ in length: {lengths}")
    decoded = {c.name: [_column_value(v, c, i) for i, v in enumerate(values[c.name])] for c in columns}
    return [
        {name: column[i] for name, column in decoded.items()} for i in range(next(iter(lengths.values())))
    ]


def _column_value(value: Any, spec: InputSpec, index: int) -> Any:
    if spec.datatype == "FP32":
        number = float(value)
        return None if math.isnan(number) else number
    if spec.datatype == "BOOL":
        return bool(value)
    return _element(value, InputSpec(spec.name, "BYTES", spec.shape, "strings"), index)


def _element(value: Any, spec: InputSpec, index: int) -> Any:
    where = f"input {spec.name!r}[{index}]"
    if spec.kind == "numbers":
        number = float(value)
        return None if np.isnan(number) else number  # NaN marks a gap, as null does on v1
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(f"{where}: not UTF-8") from None
    if spec.kind == "json":
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            raise RequestError(f"{where}: not a JSON value") from None
    return text


def task_request(tensors: ModelTensors, model: LoadedModel, request: InferRequest, binary: memoryview) -> Any:
    """The same request the v1 route would build, from tensors and parameters."""
    values = input_values(request, binary, tensors.inputs + tensors.columns)
    parameters = {k: v for k, v in (request.parameters or {}).items() if k not in PROTOCOL_PARAMETERS}
    unknown = sorted(set(parameters) - tensors.parameters)
    if unknown:
        raise RequestError(
            f"unknown parameter(s) {unknown}; this model reads {sorted(tensors.parameters) or 'none'}"
        )
    task = tensors.task
    if issubclass(task, TensorTask):
        shapes = {t.name: t.shape for t in request.inputs}
        return TensorRequest(
            model.name, {name: np.asarray(v).reshape(shapes[name]) for name, v in values.items()}
        )
    if issubclass(task, FileTask):
        files = [Upload(i, None, v) for i, v in enumerate(values[task.file_field])]
        if not files:
            raise RequestError(f"input {task.file_field!r}: no files")
        return FileRequest(model.name, files, {k: str(v) for k, v in parameters.items()})
    body = {}
    for spec in tensors.inputs:
        columns = [c for c in tensors.columns if c.column_of == spec.name and c.name in values]
        if spec.name in values and columns:
            raise RequestError(
                f"give either {spec.name!r} or its column tensors {[c.name for c in columns]}, not both"
            )
        if spec.name in values:
            body[spec.name] = [_element(v, spec, i) for i, v in enumerate(values[spec.name])]
        elif columns:
            body[spec.name] = objects_from_columns(columns, values)
        else:
            alternative = (
                " (or its column tensors)" if any(c.column_of == spec.name for c in tensors.columns) else ""
            )
            raise RequestError(
                f"missing input {spec.name!r}{alternative}; the model takes {[s.public() for s in tensors.inputs]}"
            )
    try:
        assert task.request_model is not None
        return task.request_model.model_validate({"model": model.name, **body, **parameters})
    except ValidationError as exc:
        raise RequestError(describe_validation_error(exc)) from None


# --- the task's answer → response tensors ------------------------------------------------------------


def requested_outputs(tensors: ModelTensors, request: InferRequest) -> list[tuple[OutputSpec, bool]]:
    """The outputs to answer (all unless the request names some), each with whether it goes back as
    binary tensor data (per output `binary_data`, else the request's `binary_data_output`)."""
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    if request.outputs is None:
        return [(spec, binary_default) for spec in tensors.outputs]
    wanted = []
    for requested in request.outputs:
        spec = tensors.outputs_by_name.get(requested.name)
        if spec is None:
            raise RequestError(
                f"unknown output {requested.name!r}; the model answers {sorted(tensors.outputs_by_name)}"
            )
        wanted.append((spec, bool((requested.parameters or {}).get("binary_data", binary_default))))
    return wanted


def output_values(
    tensors: ModelTensors, request: InferRequest, results: dict[str, Any]
) -> list[tuple[OutputSpec, list[Any], tuple[int, ...]]]:
    """Each requested output's flat values and shape, from the task's answer."""
    return [(spec, *spec.extract(results)) for spec, _ in requested_outputs(tensors, request)]


def infer_response(
    model: LoadedModel, tensors: ModelTensors, request: InferRequest, results: dict[str, Any]
) -> Response:
    outputs, blobs = [], []
    for spec, binary in requested_outputs(tensors, request):
        values, shape = spec.extract(results)
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": shape}
        if binary:
            blob = encode_binary(values, spec.datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = encode_json(values, spec.datatype)
        outputs.append(entry)
    body = {"model_name": model.name, "model_version": model.manifest.version, "outputs": outputs}
    if request.id is not None:
        body["id"] = request.id
    if not blobs:
        return JSONResponse(body)
    header = json.dumps(body, separators=(",", ":")).encode()
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


# --- clients' side: a task's sample as an inference request ----------------------------------------


def sample_tensors(
    task: type[ServingTask], sample: Sample, binary: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A sample request of the task (serving/tasks) as v2 input arrays and parameters: files as
    BYTES (base64 unless `binary`), texts as UTF-8 BYTES, rows as JSON BYTES, series as FP32."""
    if issubclass(task, FileTask):
        encode = (lambda d: d) if binary else base64.b64encode
        files = np.array([encode(data) for _, data, _ in sample.files], dtype=np.object_)
        return {task.file_field: files}, {k: v for k, v in sample.fields if k in task.options}
    assert sample.json is not None
    arrays: dict[str, np.ndarray] = {}
    for spec in input_specs(task):
        values = sample.json[spec.name]
        if spec.kind == "numbers":
            arrays[spec.name] = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
        else:
            arrays[spec.name] = np.array(
                [(v if isinstance(v, str) else json.dumps(v)).encode() for v in values], dtype=np.object_
            )
    return arrays, {k: v for k, v in sample.json.items() if k not in arrays and k != "model"}


def binary_infer_body(arrays: dict[str, np.ndarray], parameters: dict[str, Any]) -> tuple[bytes, int]:
    """An inference request with every input as binary tensor data and every output asked for in
    binary (what tritonclient sends by default); returns the body and its JSON header's length."""
    inputs, blobs = [], []
    for name, values in arrays.items():
        datatype = "BYTES" if values.dtype == np.object_ else "FP32"
        blob = encode_binary(values, datatype)
        inputs.append(
            {
                "name": name,
                "shape": list(values.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header = json.dumps({"inputs": inputs, "parameters": {**parameters, "binary_data_output": True}}).encode()
    return header + b"".join(blobs), len(header)


# --- routes ----------------------------------------------------------------------------------------


def find_model(server: ModelServer, name: str, model_version: str | None) -> LoadedModel:
    model = server.runtime.models.get(name)
    if model is None:
        shown = repr(name) if len(name) <= 100 else f"{name[:100]!r}…"
        raise UnknownModel(
            f"unknown model {shown}; available models: {sorted(server.runtime.models) or 'none'}"
        )
    if model_version is not None and model_version != model.manifest.version:
        raise UnknownModel(
            f"model {name!r} has no version {model_version[:40]!r}; it serves version {model.manifest.version!r}"
        )
    return model


async def server_metadata(request: Request, server: ModelServer) -> JSONResponse:
    return JSONResponse(
        {"name": "tuneserve", "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}
    )


async def live(request: Request, server: ModelServer) -> JSONResponse:
    return JSONResponse({"live": True})


async def ready(request: Request, server: ModelServer) -> JSONResponse:
    is_ready = server.ready()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


async def model_metadata(request: Request, server: ModelServer) -> JSONResponse:
    model = find_model(server, request.path_params["name"], request.path_params.get("version"))
    return JSONResponse(tensors_of(model).metadata(model))


async def model_ready(request: Request, server: ModelServer) -> JSONResponse:
    model = find_model(server, request.path_params["name"], request.path_params.get("version"))
    return JSONResponse({"name": model.name, "ready": True})


async def infer(request: Request, server: ModelServer) -> Response:
    model = find_model(server, request.path_params["name"], request.path_params.get("version"))
    refuse_simple_types(request)
    body, binary = parse_infer_body(
        await read_body(request, server.settings.max_body_bytes), request.headers.get(HEADER_LENGTH)
    )
    tensors = tensors_of(model)
    results = await server.infer(model, task_request(tensors, model, body, binary))
    return infer_response(model, tensors, body, results)


def routes(server: ServerRef) -> list[APIRoute]:
    infer_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
                },
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "binary tensor data extension: the JSON request (Inference-Header-Content-Length bytes), then the tensors",
                },
            },
        }
    }
    out: list[APIRoute] = []
    for prefix in (
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
    ):  # inference first: matched on every request
        out.append(
            DirectRoute(
                prefix + "/infer",
                bound(infer, server),
                methods=["POST"],
                summary="Inference with JSON or binary tensors",
                responses=error_responses(400, 401, 404, 413, 503),
                openapi_extra=infer_body,
            )
        )
    out += [
        DirectRoute("/v2", bound(server_metadata, server), methods=["GET"], summary="Server metadata"),
        DirectRoute("/v2/health/live", bound(live, server), methods=["GET"], summary="Liveness"),
        DirectRoute(
            "/v2/health/ready", bound(ready, server), methods=["GET"], summary="Readiness (503 until ready)"
        ),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        out += [
            DirectRoute(
                prefix,
                bound(model_metadata, server),
                methods=["GET"],
                summary="Model metadata: its input and output tensors",
                responses=error_responses(401, 404),
            ),
            DirectRoute(
                prefix + "/ready",
                bound(model_ready, server),
                methods=["GET"],
                summary="Model readiness",
                responses=error_responses(401, 404),
            ),
        ]
    return out
