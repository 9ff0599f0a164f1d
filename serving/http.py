"""The v1 HTTP routes, as a Starlette app mounted into the BentoML service at /v1.

Routes parse and validate requests, hand the inputs to the model's batcher and shape the answer.
Every client mistake becomes a 4xx `{"error": "..."}`; nothing a client sends can produce a 5xx.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.errors import InputError, RequestError
from serving.schemas import ForecastRequest, TabularRequest, TextRequest, parse_json_body
from serving.settings import MAX_FILE_BYTES, Settings

log = logging.getLogger(__name__)

SETTINGS = Settings()
MAX_FILES = 64
# Decoding and resizing run here, beside (not inside) the batcher's inference thread.
PREPARE_THREADS = os.cpu_count() or 2
_prepare_pool = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="prepare")


async def read_body(request: Request, limit: int | None = None) -> bytes:
    """The request body, at most `limit` bytes (the body limit): a larger declared Content-Length was
    refused by `Guard` before the route ran; a chunked body is counted as it arrives."""
    limit = SETTINGS.max_body_bytes if limit is None else limit
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) <= limit:
        return await request.body()
    chunks, size = [], 0
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
    return JSONResponse({"models": [m.public() for m in runtime.models.values()], "refused": runtime.broken, "not_updated": runtime.stale})


async def _text_request(request: Request, task: str):
    """Validate a `{"model", "texts"}` body, resolve the model, run the texts through its batcher."""
    service = _service(request)
    body = parse_json_body(await read_body(request), TextRequest)
    limits = service.runtime.settings
    if len(body.texts) > limits.max_items_per_request:
        raise RequestError(f"texts: {len(body.texts)} items; at most {limits.max_items_per_request} per request", status=413)
    for i, text in enumerate(body.texts):
        if len(text) > limits.max_text_chars:
            raise RequestError(f"texts[{i}]: {len(text)} characters; at most {limits.max_text_chars}", status=413)
    model = service.runtime.resolve(body.model, task)
    return model, await model.batcher.submit(body.texts)


def _answer(model, **results) -> JSONResponse:
    return JSONResponse({"model": model.name, "version": model.manifest.version, "variant": model.variant, **results})


async def classify_text(request: Request) -> JSONResponse:
    model, predictions = await _text_request(request, "text-classification")
    return _answer(model, predictions=predictions)


async def text_entities(request: Request) -> JSONResponse:
    model, results = await _text_request(request, "token-classification")
    return _answer(model, predictions=[r["entities"] for r in results], truncated=[r["truncated"] for r in results])


@dataclass(frozen=True)
class FilePart:
    """One uploaded file of a multipart body: its filename and its bytes (a view into the body)."""

    filename: str | None
    data: memoryview | bytes


TEXT_CHARSETS = {"utf-8", "utf8", "ascii", "us-ascii", "latin-1", "latin1", "iso-8859-1"}


def _parse_multipart(body: bytes, content_type: str, max_files: int, max_fields: int, max_field_bytes: int = 1024 * 1024) -> list[tuple[str, str | FilePart]]:
    """Split a multipart/form-data body held in memory into (name, text or FilePart) in body order.

    The same parser and header rules as Starlette's form parsing (python-multipart; a part with a
    `filename` is a file), without its copies: each file is a view into `body`, not bytes copied into
    a spooled temporary file and read back out. Raises ValueError on a malformed body or too many parts.
    """
    from python_multipart import MultipartParser
    from python_multipart.multipart import parse_options_header

    _, params = parse_options_header(content_type)
    if b"boundary" not in params:
        raise ValueError("Missing boundary in multipart.")
    charset = params.get(b"charset", b"utf-8").decode("latin-1").strip().lower()
    if charset not in TEXT_CHARSETS:  # any Python codec would do otherwise, some slow or unsafe
        raise ValueError(f"charset {charset[:40]!r} is not supported; send utf-8")

    def text(raw: bytes) -> str:
        return raw.decode(charset, errors="replace")

    view = memoryview(body)
    items: list[tuple[str, str | FilePart]] = []
    header_name: list[bytes] = []
    header_value: list[bytes] = []
    part: dict = {}
    counts = {"files": 0, "fields": 0}

    def on_part_begin() -> None:
        part.clear()
        part.update(disposition=b"", pieces=[], size=0, file=False)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.append(data[start:end])

    def on_header_end() -> None:
        if b"".join(header_name).lower() == b"content-disposition":
            part["disposition"] = b"".join(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, options = parse_options_header(part["disposition"])
        if b"name" not in options:
            raise ValueError('The Content-Disposition header field "name" must be provided.')
        part["name"] = text(options[b"name"])
        if b"filename" in options:
            counts["files"] += 1
            if counts["files"] > max_files:
                raise ValueError(f"Too many files. Maximum number of files is {max_files}.")
            part.update(file=True, filename=text(options[b"filename"]))
        else:
            counts["fields"] += 1
            if counts["fields"] > max_fields:
                raise ValueError(f"Too many fields. Maximum number of fields is {max_fields}.")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part["size"] += end - start
        if not part["file"] and part["size"] > max_field_bytes:
            raise ValueError(f"Part exceeded maximum size of {max_field_bytes // 1024}KB.")
        # pieces of the body stay views; the parser's own look-behind buffer is copied
        part["pieces"].append(view[start:end] if data is body else bytes(data[start:end]))

    def on_part_end() -> None:
        pieces = part["pieces"]
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        items.append((part["name"], FilePart(part["filename"], data) if part["file"] else text(bytes(data))))

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    })
    parser.write(body)
    parser.finalize()
    return items


async def _file_request(request: Request, task: str, file_field: str, options: set[str]):
    """Parse a bounded multipart body of `file_field` uploads plus `model` and `options` fields;
    decode every upload in the prepare pool (beside the inference thread). Errors name the file."""
    service = _service(request)
    expected = ", ".join(f"`{f}`" for f in [file_field, "model", *sorted(options)])
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError(f"send multipart/form-data with one or more `{file_field}` files (fields: {expected})", status=415)
    body = await read_body(request)
    try:
        form = FormData(_parse_multipart(body, request.headers["content-type"], max_files=MAX_FILES, max_fields=16))
    except Exception as exc:  # malformed multipart, too many parts
        raise RequestError(f"malformed multipart body: {exc}") from None
    unknown = sorted(set(form.keys()) - {"model", file_field, *options})
    if unknown:
        raise RequestError(f"unknown form field(s) {unknown}; expected {expected}")
    model_name = form.get("model")
    if model_name is not None and not isinstance(model_name, str):
        raise RequestError("model: expected a text field, got a file")
    model = service.runtime.resolve(model_name or None, task)
    uploads = form.getlist(file_field)
    if not uploads:
        raise RequestError(f"{file_field}: no files; send one or more `{file_field}` file fields")
    for i, upload in enumerate(uploads):
        if not isinstance(upload, FilePart):
            raise RequestError(f"{file_field}[{i}]: expected a file upload, got a text field (URLs are not fetched)")
    # One pool task per prepare thread (files dealt round-robin), not one per file: a task costs
    # the event loop a future and a thread hand-off, which adds up at dozens of files a request.
    jobs = [(f"{file_field}[{i}]", u.filename, u.data) for i, u in enumerate(uploads)]
    groups = min(len(jobs), PREPARE_THREADS)
    loop = asyncio.get_running_loop()
    results = await asyncio.gather(*(loop.run_in_executor(_prepare_pool, _prepare_many, model.predictor, jobs[g::groups]) for g in range(groups)))
    prepared = [None] * len(jobs)
    for g, group in enumerate(results):
        prepared[g::groups] = group
    errors = [p for p in prepared if isinstance(p, Exception)]
    if errors:
        raise errors[0] if isinstance(errors[0], RequestError) else RequestError(str(errors[0]))
    return service, model, form, [u.filename for u in uploads], prepared


async def classify_image(request: Request) -> JSONResponse:
    service, model, form, names, images = await _file_request(request, "image-classification", "images", {"top_k"})
    top_k = _top_k(form.get("top_k"), len(model.manifest.labels))
    predictions = await model.batcher.submit([(image, top_k) for image in images])
    for prediction, name in zip(predictions, names):
        prediction["file"] = name
    return _answer(model, predictions=predictions)


async def classify_audio(request: Request) -> JSONResponse:
    service, model, _, names, clips = await _file_request(request, "audio-classification", "audio", set())
    windows = [w.features for clip in clips for w in clip.windows]
    probs = await model.batcher.submit(windows) if windows else []
    predictions, used = [], 0
    for name, clip in zip(names, clips):
        predictions.append({**model.predictor.combine(clip, probs[used : used + len(clip.windows)]), "file": name})
        used += len(clip.windows)
    return _answer(model, predictions=predictions)


# Encoding more rows than this runs in the prepare pool instead of on the event loop.
INLINE_ROWS = 64


async def tabular_predict(request: Request) -> JSONResponse:
    service = _service(request)
    body = parse_json_body(await read_body(request), TabularRequest)
    model = service.runtime.resolve(body.model, "tabular-classification")
    limit = model.predictor.encoder.max_rows
    if len(body.rows) > limit:
        raise RequestError(f"rows: {len(body.rows)} rows; at most {limit} per request", status=413)
    try:
        if len(body.rows) <= INLINE_ROWS:
            block = model.predictor.prepare(body.rows)
        else:
            block = await asyncio.get_running_loop().run_in_executor(_prepare_pool, model.predictor.prepare, body.rows)
    except InputError as exc:
        raise RequestError(str(exc)) from None
    (predictions,) = await model.batcher.submit([block])
    return _answer(model, predictions=predictions)


async def forecast(request: Request) -> JSONResponse:
    service = _service(request)
    body = parse_json_body(await read_body(request), ForecastRequest)
    model = service.runtime.resolve(body.model, "forecasting")
    try:
        prepared = model.predictor.prepare(body.history, body.horizon)
    except ValueError as exc:  # SeriesError, or a horizon the model cannot give
        raise RequestError(str(exc)) from None
    (output,) = await model.batcher.submit([prepared.window])
    return _answer(model, **model.predictor.finish(prepared, output))


async def openapi_json(request: Request) -> JSONResponse:
    global _OPENAPI
    if _OPENAPI is None:
        from serving.openapi import openapi_document

        _OPENAPI = openapi_document()
    return JSONResponse(_OPENAPI)


_OPENAPI = None


async def reload_models(request: Request) -> JSONResponse:
    """Re-read the model repository and swap in new versions without dropping requests in flight.
    Needs the API key (off without one). Answers in this worker only (`worker_pid` says which);
    with several workers, restart them instead."""
    service = _service(request)
    if not SETTINGS.api_key:
        raise RequestError("model reload is turned off: set TUNESERVE_API_KEY to enable it (and call it with the key)", status=403)
    report = await service.reload()
    log.info("reload: %s", report)
    return JSONResponse({**report, "models": sorted(service.runtime.models), "refused_now": service.runtime.broken,
                         "not_updated": service.runtime.stale, "worker_pid": os.getpid()})


def _top_k(raw, classes: int) -> int:
    if raw is None:
        return min(5, classes)
    if not isinstance(raw, str) or not re.fullmatch(r"-?[0-9]{1,9}", raw.strip()):
        raise RequestError(f"top_k: expected an integer between 1 and {classes}")
    value = int(raw)
    if not 1 <= value <= classes:
        raise RequestError(f"top_k: {value} is out of range; the model has {classes} classes (1..{classes})")
    return value


def _prepare_one(predictor, field: str, filename: str | None, data: bytes | memoryview):
    name = f"{field} ({filename!r})" if filename else field
    if len(data) > MAX_FILE_BYTES:
        raise RequestError(f"{name}: {len(data) / 2**20:.1f} MiB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MiB per file", status=413)
    try:
        return predictor.prepare(bytes(data))
    except InputError as exc:
        raise RequestError(f"{name}: {exc}") from None


def _prepare_many(predictor, jobs: list[tuple[str, str | None, memoryview | bytes]]) -> list:
    """`_prepare_one` for each (field, filename, data) in turn; an exception is returned in its place."""
    results = []
    for field, filename, data in jobs:
        try:
            results.append(_prepare_one(predictor, field, filename, data))
        except Exception as exc:
            results.append(exc)
    return results


async def request_error(request: Request, exc: RequestError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status == 503 else None  # at capacity: come back shortly
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


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


class Guard:
    """ASGI middleware in front of every /v1 route, answering before the route runs or any of the body
    is read: 401 without the API key (when TUNESERVE_API_KEY is set; the OpenAPI document stays
    open), 413 for a declared Content-Length above the body limit."""

    OPEN_PATHS = ("/openapi.json",)

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        self.key = settings.api_key.encode() if settings.api_key else None
        self.limit = settings.max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope["headers"] if k.lower() in (b"authorization", b"x-api-key", b"content-length")}
        refusal = None
        if self.key is not None and self._route_path(scope) not in self.OPEN_PATHS and not self._authorised(headers):
            refusal = JSONResponse({"error": "missing or wrong API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"},
                                   status_code=401, headers={"WWW-Authenticate": 'Bearer realm="tuneserve"'})
        elif (declared := headers.get(b"content-length", b"").strip()).isdigit() and int(declared) > self.limit:
            refusal = JSONResponse({"error": f"request body is {int(declared)} bytes; the limit is {self.limit} (TUNESERVE_MAX_BODY_MB)"}, status_code=413)
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    def _route_path(scope) -> str:
        """The path inside this app (the mount's prefix, e.g. /v1, taken off)."""
        path, root = scope["path"], scope.get("root_path", "")
        return path[len(root):] if root and path.startswith(root) else path

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given, self.key)


ROUTES = [
    Route("/models", list_models, methods=["GET"]),
    Route("/text/classify", classify_text, methods=["POST"]),
    Route("/text/entities", text_entities, methods=["POST"]),
    Route("/image/classify", classify_image, methods=["POST"]),
    Route("/audio/classify", classify_audio, methods=["POST"]),
    Route("/tabular/predict", tabular_predict, methods=["POST"]),
    Route("/forecast", forecast, methods=["POST"]),
    Route("/admin/reload", reload_models, methods=["POST"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
]
http_app = Starlette(
    routes=[*ROUTES, Route("/{path:path}", no_route, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])],
    exception_handlers={RequestError: request_error, HTTPException: http_error, ClientDisconnect: client_gone},
    middleware=[Middleware(Guard, settings=SETTINGS)],
)
