"""The v1 routes, one per task of the registry, plus the model list and hot reload.

Every task route runs the same stages (serving/tasks/base.py): decode the body into the task's
request, resolve the model, check, prepare (off the event loop when heavy), run through the model's
batcher, answer. Each route is documented from the task's request and response models; routes are
called directly (no dependency injection or response validation per request).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, request_response

from serving.errors import RequestError
from serving.protocols.bodies import JSONResponse, parse_json_body, read_body, require_json
from serving.protocols.multipart import FilePart, parse_multipart
from serving.tasks import TASKS, FileRequest, FileTask, ServingTask, Upload

if TYPE_CHECKING:
    from serving.runtime import LoadedModel
    from serving.server import ModelServer

log = logging.getLogger(__name__)

ServerRef = Callable[[], "ModelServer"]
MAX_FORM_FIELDS = 16


class ErrorBody(BaseModel):
    error: str


ERRORS = {
    400: "the request is malformed or names something wrong",
    401: "missing or wrong API key (when one is configured)",
    403: "turned off (model reload needs an API key configured)",
    404: "unknown model",
    409: "the repository holds no model; nothing was unloaded",
    413: "body, item count or file over its limit",
    415: "wrong content type",
    503: "at capacity; retry later",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": ERRORS[code]} for code in codes}


class DirectRoute(APIRoute):
    """Documented like a FastAPI route (so BentoML's /docs.json and /v1/openapi.json list it), called
    like a Starlette one: the endpoint takes the Request and returns a Response."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.app = request_response(endpoint)

    # Starlette's matching and handling: FastAPI's per-request route context is not used here
    matches = Route.matches
    handle = Route.handle


def answer(model: LoadedModel, results: dict[str, Any]) -> JSONResponse:
    return JSONResponse(
        {"model": model.name, "version": model.manifest.version, "variant": model.variant, **results}
    )


async def read_form(
    request: Request, task: type[FileTask], limit: int, max_files: int
) -> ImmutableMultiDict[str, str | FilePart]:
    """A bounded multipart body of `task.file_field` uploads plus `model` and the task's options."""
    expected = ", ".join(f"`{f}`" for f in [task.file_field, "model", *sorted(task.options)])
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError(
            f"send multipart/form-data with one or more `{task.file_field}` files (fields: {expected})",
            status=415,
        )
    body = await read_body(request, limit)
    try:
        form = ImmutableMultiDict(
            parse_multipart(
                body, request.headers["content-type"], max_files=max_files, max_fields=MAX_FORM_FIELDS
            )
        )
    except Exception as exc:  # malformed multipart, too many parts
        raise RequestError(f"malformed multipart body: {exc}") from None
    unknown = sorted(set(form.keys()) - {"model", task.file_field, *task.options})
    if unknown:
        raise RequestError(f"unknown form field(s) {unknown}; expected {expected}")
    for name in ("model", *task.options):
        given = form.getlist(name)
        if len(given) > 1:
            raise RequestError(f"{name}: given {len(given)} times; send it once")
        if given and not isinstance(given[0], str):
            raise RequestError(f"{name}: expected a text field, got a file")
    return form


def file_request(form: ImmutableMultiDict[str, str | FilePart], task: type[FileTask]) -> FileRequest:
    field = task.file_field
    uploads = form.getlist(field)
    if not uploads:
        raise RequestError(f"{field}: no files; send one or more `{field}` file fields")
    files = []
    for i, upload in enumerate(uploads):
        if not isinstance(upload, FilePart):
            raise RequestError(
                f"{field}[{i}]: expected a file upload, got a text field (URLs are not fetched)"
            )
        files.append(Upload(i, upload.filename, upload.data))
    model = form.get("model")
    return FileRequest(
        model if isinstance(model, str) and model else None,
        files,
        {k: v for k, v in form.multi_items() if k in task.options and isinstance(v, str)},
    )


def task_endpoint(task: type[ServingTask], server: ServerRef) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        srv = server()
        settings = srv.settings
        if issubclass(task, FileTask):
            form = await read_form(request, task, settings.max_body_bytes, settings.max_files)
            model_name = form.get("model")
            model = srv.runtime.resolve(
                model_name or None if isinstance(model_name, str) else None, task.name
            )
            body: Any = file_request(form, task)
        else:
            assert task.request_model is not None
            require_json(request)
            body = parse_json_body(await read_body(request, settings.max_body_bytes), task.request_model)
            model = srv.runtime.resolve(body.model, task.name)
        return answer(model, await srv.infer(model, body))

    endpoint.__name__ = task.name.replace("-", "_")
    return endpoint


def request_body(task: type[ServingTask]) -> dict[str, Any]:
    """The route's documented request body: the task's pydantic request model as JSON, or the
    multipart form of its file field, `model` and its options. One example each."""
    if issubclass(task, FileTask):
        form = {
            "type": "object",
            "required": [task.file_field],
            "additionalProperties": False,
            "properties": {
                task.file_field: {
                    "type": "array",
                    "items": {"type": "string", "format": "binary"},
                    "minItems": 1,
                },
                "model": {"type": "string"},
                **{name: option.schema for name, option in task.options.items()},
            },
        }
        example: dict[str, Any] | None = {"model": task.default_model, task.file_field: ["(file contents)"]}
        return {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": form,
                    "example": example,
                    "encoding": {task.file_field: {"contentType": "application/octet-stream"}},
                }
            },
        }
    assert task.request_model is not None
    schema = task.request_model.model_json_schema()
    if "$defs" in schema:
        raise TypeError(f"{task.request_model.__name__}: nested request models are not documented inline")
    example = task.samples(1)[0].json
    return {"required": True, "content": {"application/json": {"schema": schema, "example": example}}}


async def list_models(request: Request, server: ModelServer) -> JSONResponse:
    runtime = server.runtime
    return JSONResponse(
        {
            "models": [m.public() for m in runtime.models.values()],
            "refused": runtime.broken,
            "not_updated": runtime.stale,
            # `tuneserve serve --build-missing`: the model being built and those still to come
            "building": server.build_status(),
        }
    )


async def reload_models(request: Request, server: ModelServer) -> JSONResponse:
    """Re-read the model repository and swap in new versions without dropping requests in flight.
    Needs the API key (off without one). Answers in this worker only (`worker_pid` says which);
    with several workers, restart them instead."""
    if not server.settings.api_key:
        raise RequestError(
            "model reload is turned off: set TUNESERVE_API_KEY to enable it (and call it with the key)",
            status=403,
        )
    report = await server.reload()
    log.info("reload: %s", report)
    runtime = server.runtime
    return JSONResponse(
        {
            **report,
            "models": sorted(runtime.models),
            "refused_now": runtime.broken,
            "not_updated": runtime.stale,
            "worker_pid": os.getpid(),
        }
    )


class ModelList(BaseModel):
    models: list[dict[str, Any]]
    refused: dict[str, str]
    not_updated: dict[str, str]


def bound(handler: Callable[[Request, ModelServer], Any], server: ServerRef) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        return await handler(request, server())

    endpoint.__name__ = handler.__name__
    return endpoint


def routes(server: ServerRef) -> list[APIRoute]:
    """Every v1 route: the model list, one per task of the registry, and hot reload."""
    out: list[APIRoute] = [
        DirectRoute(
            "/models",
            bound(list_models, server),
            methods=["GET"],
            response_model=ModelList,
            summary="The models that serve, and the folders refused at load with why",
            responses=error_responses(401),
        )
    ]
    for task in TASKS.values():
        codes = (400, 401, 404, 413, 415, 503) if issubclass(task, FileTask) else (400, 401, 404, 413, 503)
        out.append(
            DirectRoute(
                task.route,
                task_endpoint(task, server),
                methods=["POST"],
                summary=task.summary,
                response_model=task.response_model,
                responses=error_responses(*codes),
                openapi_extra={"requestBody": request_body(task)},
                operation_id=task.name.replace("-", "_"),
            )
        )
    out.append(
        DirectRoute(
            "/admin/reload",
            bound(reload_models, server),
            methods=["POST"],
            summary="Re-read the model repository; swap in changed models without dropping requests",
            responses=error_responses(401, 403, 409),
        )
    )
    return out
