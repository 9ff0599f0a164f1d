"""BentoML APIs, one per task of the registry: what BentoML's clients (`bentoml.SyncHTTPClient`) and its
docs page see as the service's endpoints, beside the v1 routes.

Each task gets an async `@bentoml.api` method named after its `client_method` (`classify_text` at
`/classify_text`), typed from the task: a JSON task's request fields, or a file task's files as
`list[pathlib.Path]` (BentoML's multipart file type) with its options; `model` last. It answers
through `ModelServer.infer`, the same admission, batchers and answers as v1.

BentoML documents the request from these types and its clients send it so, but the method reads
the HTTP body itself, with the v1 routes' code (`Unread` below): BentoML's own parsing would fetch
a URL sent in place of a file, take any content type as JSON and read bodies without a limit. So
the API key, the content types, the size limits and every error (`{"error": ...}`, with
`Retry-After` on 429 and 503) are v1's. Called in-process with arguments, the method validates
them with the task's request model and returns the answer as the task's response model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
from pydantic import ValidationError, create_model
from starlette.requests import Request
from starlette.responses import Response

from serving.app import request_error
from serving.errors import RequestError
from serving.protocols.auth import REFUSAL, authorised
from serving.protocols.bodies import (
    JSONResponse,
    describe_validation_error,
    parse_json_body,
    read_body,
    require_json,
)
from serving.protocols.v1 import file_request, read_form
from serving.tasks import TASKS, FileRequest, FileTask, ServingTask, Upload

if TYPE_CHECKING:
    from serving.runtime import LoadedModel
    from serving.server import ModelServer


class Unread:
    """What the method receives for each argument over HTTP: the request, whose body it reads itself."""

    def __init__(self, request: Request) -> None:
        self.request = request


class ReadByTheMethod(bentoml.IODescriptor):
    """The input spec of a task API: documented and sent like any BentoML input, but not parsed by
    BentoML's serde (see the module's docstring)."""

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> bentoml.IODescriptor:
        unread = Unread(request)
        return cls.model_construct(None, **dict.fromkeys(cls.model_fields, unread))


def task_api(task: type[ServingTask]) -> Any:
    """The BentoML API method of `task` (for the service class, which holds `server`)."""
    spec = create_model(  # type: ignore[call-overload]
        f"{type_name(task.client_method)}Input", __base__=ReadByTheMethod, **task.arguments(files=list[Path])
    )
    signature = task.method_signature(files=list[Path], returns=task.response_model)

    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        server: ModelServer = self.server
        given = signature.bind(self, *args, **kwargs).arguments
        given.pop("self")
        unread = next(iter(given.values()), None)
        if isinstance(unread, Unread):
            return await over_http(task, server, unread.request)
        request = from_arguments(task, given)
        model = server.runtime.resolve(request.model, task.name)
        return task.response_model.model_validate(answer(model, await server.infer(model, request)))

    method.__name__ = method.__qualname__ = task.client_method
    method.__doc__ = f"{task.summary} (as POST /v1{task.route})"
    method.__signature__ = signature  # type: ignore[attr-defined]
    return bentoml.api(route=api_route(task), input_spec=spec)(method)


def api_route(task: type[ServingTask]) -> str:
    return f"/{task.client_method}"


def task_apis(reserved: Iterable[str]) -> Callable[[type], type]:
    """A class decorator adding every task's API to the service class, refusing a route that is one
    of `reserved` or under it (the mounted apps' prefixes and BentoML's own paths)."""
    taken = tuple(reserved)

    def add(cls: type) -> type:
        for task in TASKS.values():
            api = task_api(task)
            clash = [p for p in taken if api.route == p or (p != "/" and api.route.startswith(p + "/"))]
            if clash or hasattr(cls, api.name):
                raise TypeError(
                    f"{task.name}: the API {api.name} ({api.route}) is taken: {clash or api.name}"
                )
            setattr(cls, api.name, api)
        return cls

    return add


def type_name(method: str) -> str:
    return "".join(part.capitalize() for part in method.split("_"))


async def over_http(task: type[ServingTask], server: ModelServer, request: Request) -> Response:
    """The body read and answered as the task's v1 route does, with v1's errors."""
    settings = server.settings
    try:
        if settings.api_key and not authorised(
            settings.api_key.encode(), [(k.lower(), v) for k, v in request.scope["headers"]]
        ):
            return JSONResponse(
                {"error": REFUSAL}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="tuneserve"'}
            )
        body: Any
        if issubclass(task, FileTask):
            form = await read_form(request, task, settings.max_body_bytes, settings.max_files)
            body = bentoml_form_fields(file_request(form, task))
        else:
            assert task.request_model is not None
            require_json(request)
            body = parse_json_body(await read_body(request, settings.max_body_bytes), task.request_model)
        model = server.runtime.resolve(body.model, task.name)
        return JSONResponse(answer(model, await server.infer(model, body)))
    except RequestError as exc:
        return await request_error(request, exc)


def bentoml_form_fields(request: FileRequest) -> FileRequest:
    """BentoML's clients send a multipart request's text fields as JSON (`"intent"` for a string,
    `null` for None); a field typed by hand (`-F model=intent`) is taken as it is."""

    def value(text: str) -> str | None:
        if text == "null":
            return None
        if text.startswith('"'):
            try:
                decoded = json.loads(text)
            except ValueError:
                return text
            return decoded if isinstance(decoded, str) else text
        return text

    fields = {name: v for name, text in request.fields.items() if (v := value(text)) is not None}
    return FileRequest(value(request.model) if request.model else None, request.files, fields)


def from_arguments(task: type[ServingTask], given: dict[str, Any]) -> Any:
    """The task's request from in-process arguments (files as paths or bytes)."""
    if issubclass(task, FileTask):
        files = [
            Upload(i, f.name, f.read_bytes()) if isinstance(f, Path) else Upload(i, None, bytes(f))
            for i, f in enumerate(given[task.file_field])
        ]
        options = {name: str(given[name]) for name in task.options if given.get(name) is not None}
        return FileRequest(given.get("model"), files, options)
    assert task.request_model is not None
    try:
        return task.request_model.model_validate(given)
    except ValidationError as exc:
        raise RequestError(describe_validation_error(exc)) from None


def answer(model: LoadedModel, results: dict[str, Any]) -> dict[str, Any]:
    return {"model": model.name, "version": model.manifest.version, "variant": model.variant, **results}
