"""The v1 HTTP routes, as a Starlette app mounted into the BentoML service at /v1.

Routes parse and validate requests, hand the inputs to the model's batcher and shape the answer.
Every client mistake becomes a 4xx `{"error": "..."}`; nothing a client sends can produce a 5xx.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.errors import RequestError
from serving.schemas import TextRequest, parse_json_body

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise RequestError(f"request body is {int(declared)} bytes; the limit is {limit}", status=413)
        return await request.body()
    chunks, size = [], 0  # chunked upload: count as it arrives
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body exceeds the limit of {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _service(request: Request):
    return request.app.state.service


async def list_models(request: Request) -> JSONResponse:
    runtime = _service(request).runtime
    return JSONResponse({"models": [m.public() for m in runtime.models.values()], "refused": runtime.broken})


async def classify_text(request: Request) -> JSONResponse:
    service = _service(request)
    body = parse_json_body(await read_body(request), TextRequest)
    limits = service.runtime.settings
    if len(body.texts) > limits.max_items_per_request:
        raise RequestError(f"texts: {len(body.texts)} items; at most {limits.max_items_per_request} per request", status=413)
    for i, text in enumerate(body.texts):
        if len(text) > limits.max_text_chars:
            raise RequestError(f"texts[{i}]: {len(text)} characters; at most {limits.max_text_chars}", status=413)
    model = service.runtime.resolve(body.model, "text-classification")
    predictions = await service.batchers[model.name].submit(body.texts)
    return JSONResponse({"model": model.name, "version": model.manifest.version, "variant": model.variant, "predictions": predictions})


async def request_error(request: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Unknown /v1 paths and wrong methods answer in the same JSON error shape as everything else."""
    what = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return JSONResponse({"error": what.get(exc.status_code, str(exc.detail))}, status_code=exc.status_code, headers=exc.headers)


async def no_route(request: Request) -> JSONResponse:
    """Catch-all: a known path with the wrong method is a 405, anything else a 404."""
    path = "/" + request.path_params["path"]
    raise HTTPException(405 if any(r.path == path for r in ROUTES) else 404)


async def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
    return JSONResponse({"error": "client disconnected"}, status_code=499)


ROUTES = [
    Route("/models", list_models, methods=["GET"]),
    Route("/text/classify", classify_text, methods=["POST"]),
]
http_app = Starlette(
    routes=[*ROUTES, Route("/{path:path}", no_route, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])],
    exception_handlers={RequestError: request_error, HTTPException: http_error, ClientDisconnect: client_gone},
)
