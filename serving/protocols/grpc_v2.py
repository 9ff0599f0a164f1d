"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), in the same worker and
on the same event loop as the HTTP routes, so it shares the models and their batchers.

A request is turned into the REST protocol's request (every input as binary tensor data) and goes
through the same checks, task request and `ModelServer.infer`; outputs come back as
`raw_output_contents`. Off unless TUNESERVE_GRPC_PORT is set. The stubs (grpc_predict_v2_pb2*.py)
are generated from grpc_predict_v2.proto by `make protos` and committed. They register the
protocol's `inference.*` messages in protobuf's default pool, so this module is imported only where
a gRPC server starts (Triton's client registers the same names in its own process).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from serving.errors import RequestError
from serving.protocols import grpc_predict_v2_pb2 as pb
from serving.protocols import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.protocols.auth import REFUSAL, authorised
from serving.protocols.tensors import DTYPES, encode_binary
from serving.protocols.v1 import ServerRef
from serving.protocols.v2 import (
    SERVER_VERSION,
    InferInput,
    InferRequest,
    RequestedOutput,
    find_model,
    output_values,
    task_request,
    tensors_of,
)
from serving.settings import Settings

log = logging.getLogger(__name__)

STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# typed `contents` fields by datatype, for clients that send no raw_input_contents
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _parameter(value: Any) -> Any:
    which = value.WhichOneof("parameter_choice")
    return getattr(value, which) if which else None


def _parameters(entries: Any) -> dict[str, Any] | None:
    return {k: _parameter(v) for k, v in entries.items()} or None


def rest_request(message: Any) -> tuple[InferRequest, memoryview]:
    """The REST request this gRPC request stands for: every input as binary tensor data, from
    `raw_input_contents` or from the typed `contents` fields."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise RequestError(f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs")
    inputs, blobs = [], []
    for i, tensor in enumerate(message.inputs):
        if raw:
            blob = raw[i]
        elif tensor.datatype in CONTENTS:
            values = list(getattr(tensor.contents, CONTENTS[tensor.datatype]))
            blob = encode_binary(values, tensor.datatype) if tensor.datatype in DTYPES else b""
        else:
            raise RequestError(
                f"input {tensor.name!r}: datatype {tensor.datatype!r} is not one of the protocol's"
            )
        inputs.append(
            InferInput(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=list(tensor.shape),
                parameters={**(_parameters(tensor.parameters) or {}), "binary_data_size": len(blob)},
            )
        )
        blobs.append(blob)
    outputs = [RequestedOutput(name=o.name) for o in message.outputs] or None
    if not inputs:
        raise RequestError("inputs: no input tensors")
    request = InferRequest(
        id=message.id or None, parameters=_parameters(message.parameters), inputs=inputs, outputs=outputs
    )
    return request, memoryview(b"".join(blobs))


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server: ServerRef, settings: Settings) -> None:
        self.server = server
        self.key = settings.api_key.encode() if settings.api_key else None

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.server().ready())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorise(context)
        try:
            find_model(self.server(), request.name, request.version or None)
        except RequestError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorise(context)
        return pb.ServerMetadataResponse(
            name="tuneserve", version=SERVER_VERSION, extensions=["binary_tensor_data"]
        )

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorise(context)
        model = await self._call(context, find_model, self.server(), request.name, request.version or None)
        meta = tensors_of(model).metadata(model)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorise(context)
        server = self.server()
        try:
            model = find_model(server, request.model_name, request.model_version or None)
            rest, binary = rest_request(request)
            tensors = tensors_of(model)
            results = await server.infer(model, task_request(tensors, model, rest, binary))
            response = pb.ModelInferResponse(
                model_name=model.name, model_version=model.manifest.version, id=request.id
            )
            for spec, values, shape in output_values(tensors, rest, results):
                response.outputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
                response.raw_output_contents.append(encode_binary(values, spec.datatype))
            return response
        except RequestError as exc:
            await context.abort(STATUS.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message)

    async def _call(self, context: grpc.aio.ServicerContext, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except RequestError as exc:
            await context.abort(STATUS.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message)

    async def _authorise(self, context: grpc.aio.ServicerContext) -> None:
        """With TUNESERVE_API_KEY set, everything but the health calls needs the key, as over HTTP."""
        if self.key is None:
            return
        metadata = [
            (k.lower().encode(), v if isinstance(v, bytes) else str(v).encode())
            for k, v in (context.invocation_metadata() or ())
        ]
        if not authorised(self.key, metadata):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)


async def start_grpc_server(server: ServerRef, settings: Settings) -> grpc.aio.Server:
    """Serve the protocol on settings.grpc_port (every address) on the running event loop."""
    limit = settings.max_body_bytes
    grpc_server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 1),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(server, settings), grpc_server)
    grpc_server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    await grpc_server.start()
    log.info("Open Inference Protocol over gRPC on %s:%s", settings.grpc_host, settings.grpc_port)
    return grpc_server
