"""The app factory: (model server, settings) → the ASGI app of the v1 routes.

BentoML mounts it at /v1 (serving/service.py); tests serve it in-process. It is a FastAPI app so
that BentoML's docs page (`/docs.json`) lists its routes; the routes themselves bypass FastAPI's
per-request machinery (serving/protocols/v1.py). Every client mistake becomes a 4xx
`{"error": "..."}`; nothing a client sends can produce a 5xx.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.connections import restore_path
from serving.errors import RequestError
from serving.protocols import v1, v2
from serving.protocols.auth import REFUSAL, authorised
from serving.protocols.bodies import JSONResponse
from serving.settings import Settings

if TYPE_CHECKING:
    from serving.server import ModelServer

DESCRIPTION = (
    'Predictions from the models of the repository. Every client mistake is a 4xx with {"error": message}.'
)
V2_DESCRIPTION = (
    "Every model of the repository over the Open Inference Protocol: raw inputs (texts, files, rows as JSON) "
    "as BYTES tensors, JSON or binary tensor data, the same pre-processing and batching as /v1."
)


class DocumentedApp(FastAPI):
    """A FastAPI app only for what BentoML and clients read (its routes and OpenAPI document); each
    request goes through Starlette's own middleware stack and router, without what FastAPI adds per
    request for features these routes do not use (dependency exit stacks, its body limit, route
    context and telemetry)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # FastAPI's own telemetry (a span and metrics per request whenever OpenTelemetry is set up,
        # as BentoML sets it up) is skipped: BentoML's tracing, under TUNESERVE_TRACE_SAMPLE_RATE, covers it
        await Starlette.__call__(self, scope, receive, send)

    def build_middleware_stack(self) -> ASGIApp:
        documented = self.router
        self.router = Router(routes=documented.routes)  # type: ignore[assignment]
        try:
            return Starlette.build_middleware_stack(self)
        finally:
            self.router = documented


def create_app(server: ModelServer | v1.ServerRef, settings: Settings) -> FastAPI:
    """The v1 app over `server`, or over a function returning it (BentoML creates the server, in
    its service instance, only after the app is mounted)."""
    return _app(
        v1.routes(_ref(server)), "/v1", "", "tuneserve", DESCRIPTION, settings, open_paths=("/openapi.json",)
    )


def create_v2_app(server: ModelServer | v1.ServerRef, settings: Settings) -> FastAPI:
    """The Open Inference Protocol (KServe v2) app over the same server. Its paths carry their /v2
    prefix and it is mounted at the root: clients ask for `GET /v2` itself, which a mount at /v2
    would answer with a redirect. It answers nothing outside /v2."""
    return _app(
        v2.routes(_ref(server)),
        "",
        "/v2",
        "tuneserve (Open Inference Protocol)",
        V2_DESCRIPTION,
        settings,
        open_paths=("/v2/openapi.json", "/v2/health/live", "/v2/health/ready"),
    )


def _ref(server: ModelServer | v1.ServerRef) -> v1.ServerRef:
    return server if callable(server) else (lambda: server)


def _app(
    routes: Sequence[BaseRoute],
    mount: str,
    prefix: str,
    title: str,
    description: str,
    settings: Settings,
    open_paths: tuple[str, ...],
) -> FastAPI:
    """An app of `routes` (paths under `prefix`) to be mounted at `mount`, with the API-key and body
    guard, JSON errors, its OpenAPI document at `prefix`/openapi.json and a JSON 404/405 for any
    other path under `prefix`."""
    app = DocumentedApp(
        title=title,
        version=(mount + prefix).strip("/"),
        description=description,
        docs_url=None,
        redoc_url=None,
        openapi_url=f"{prefix}/openapi.json",
        servers=[{"url": mount or "/"}],
        routes=list(routes),
        exception_handlers={
            RequestError: request_error,
            HTTPException: http_error,
            ClientDisconnect: client_gone,
        },
        middleware=[Middleware(Guard, settings=settings, open_paths=open_paths)],
    )

    async def no_route(request: Request) -> JSONResponse:
        """Catch-all: a known path with the wrong method is a 405, anything else a 404."""
        partial = any(
            route.matches(request.scope)[0] == Match.PARTIAL
            for route in app.router.routes
            if route is not catch_all
        )
        raise HTTPException(405 if partial else 404)

    catch_all = Route(
        prefix + "/{path:path}",
        no_route,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    app.router.routes.append(catch_all)
    return app


def openapi_document(protocol: str = "v1", settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI document of the v1 or v2 routes (what GET /v1/openapi.json or /v2/openapi.json serves)."""
    factory = {"v1": create_app, "v2": create_v2_app}[protocol]
    return factory(_no_server, settings or Settings()).openapi()


def _no_server() -> ModelServer:
    """The server of an app built only for its OpenAPI document: building it never asks for one."""
    raise RuntimeError("this app was built for its OpenAPI document only; it has no model server")


async def request_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None  # at capacity: come back shortly
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Unknown /v1 paths and wrong methods answer in the same JSON error shape as everything else."""
    assert isinstance(exc, HTTPException)
    what = {
        404: f"no route {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }
    return JSONResponse(
        {"error": what.get(exc.status_code, str(exc.detail))},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def client_gone(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "client disconnected"}, status_code=499)


class Guard:
    """ASGI middleware in front of every /v1 route, answering before the route runs or any of the body
    is read: 401 without the API key (when TUNESERVE_API_KEY is set; the OpenAPI documents and the
    v2 health routes stay open, for probes), 413 for a declared Content-Length above the body limit."""

    def __init__(self, app: ASGIApp, settings: Settings, open_paths: tuple[str, ...]) -> None:
        self.app = app
        self.open_paths = open_paths
        self.key = settings.api_key.encode() if settings.api_key else None
        self.limit = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        wanted = [
            (k.lower(), v) for k, v in scope["headers"] if k.lower() in (b"authorization", b"x-api-key")
        ]
        refusal = None
        if (
            self.key is not None
            and self._route_path(scope) not in self.open_paths
            and not authorised(self.key, wanted)
        ):
            refusal = JSONResponse(
                {"error": REFUSAL},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="tuneserve"'},
            )
        elif (declared := _header(scope, b"content-length").strip()).isdigit() and int(declared) > self.limit:
            refusal = JSONResponse(
                {
                    "error": f"request body is {int(declared)} bytes; the limit is {self.limit} (TUNESERVE_MAX_BODY_MB)"
                },
                status_code=413,
            )
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    def _route_path(scope: Scope) -> str:
        """The path inside this app (the mount's prefix, e.g. /v1, taken off)."""
        path, root = scope["path"], scope.get("root_path", "")
        return path[len(root) :] if root and path.startswith(root) else path


def _header(scope: Scope, name: bytes) -> bytes:
    return next((v for k, v in scope["headers"] if k.lower() == name), b"")


class UnroutablePaths:
    """ASGI middleware for the whole server: a /v1 or /v2 path holding a newline (sent as %0A)
    matches no mount (Starlette's path patterns stop at a newline), so BentoML would answer a bare
    `Not Found`; it gets the same JSON 404 as any other unknown path."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        restore_path(scope)  # the innermost middleware: routing sees the real path again
        path = scope.get("path", "")
        if scope["type"] == "http" and "\n" in path and path.startswith(self.prefixes):
            return await JSONResponse({"error": f"no route {path[:200]!r}"}, status_code=404)(
                scope, receive, send
            )
        await self.app(scope, receive, send)
