"""The BentoML service: one model server per worker, the v1 app mounted at /v1, the v2 app beside it,
and a BentoML API per task for BentoML's clients (serving/protocols/native.py), all answering
through the same server.

Run it with `bentoml serve serving.service:TuneServe` (or `make serve`). Settings are read once, here,
from TUNESERVE_* variables (serving/settings.py). Why the routes are a mounted app with per-model
batchers instead of batchable `@bentoml.api` methods: docs/decisions/0001-asgi-routes-with-own-batchers.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import Future
from typing import cast

# Pre-processing calls numpy's BLAS on small matrices from several threads at once (one per
# request being prepared); a multi-threaded BLAS would fight ONNX Runtime's threads for the cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import bentoml

from serving.app import UnroutablePaths, create_app, create_v2_app
from serving.connections import ConnectionLimits, EdgeApp, install, path_labeller, route_table
from serving.protocols.native import api_route, task_apis
from serving.settings import Settings
from serving.tasks import TASKS

SETTINGS = Settings()
V1_APP = create_app(lambda: bentoml.get_current_service().server, SETTINGS)
V2_APP = create_v2_app(lambda: bentoml.get_current_service().server, SETTINGS)


def _start_loading(settings: Settings) -> Future | None:
    """In a BentoML worker, start opening the models while BentoML finishes its own start-up.

    The worker imports this module, then builds its ASGI app and its server and only then creates
    the service instance; creating the ONNX Runtime sessions (mostly native code, which releases the
    GIL) overlaps with that instead of following it. Elsewhere (the parent process, `bentoml build`,
    tests importing the module) nothing is loaded until the service is instantiated. ONNX Runtime,
    OpenCV and the tokenizers are imported in the thread, not by the parent process.
    """
    if bentoml.server_context.worker_index is None:
        return None
    future: Future = Future()

    def run() -> None:
        try:
            from serving.runtime import Runtime

            future.set_result(Runtime(settings))
        except BaseException as exc:  # re-raised by the service
            future.set_exception(exc)

    threading.Thread(target=run, name="tuneserve-preload", daemon=True).start()
    return future


def _loaded(future: Future | None):
    """The runtime the loading thread opened, or None to load in the caller: no thread in this
    process, or an ImportError in it (first imports racing the main thread's can, rarely, trip
    importlib's deadlock detection; everything is imported by now, so loading again is safe)."""
    if future is None:
        return None
    try:
        return future.result()
    except ImportError as exc:
        logging.getLogger(__name__).warning(
            "opening the models in the background failed (%s); opening them now", exc
        )
        return None


LOADING = _start_loading(SETTINGS)

# BentoML's own routes (assets: its docs page's files), beside the mounted apps' and the task APIs'.
BENTOML_PATHS = ["/", "/docs.json", "/schema.json", "/metrics", "/healthz", "/livez", "/readyz"]
BENTOML_PATTERNS = [(r"/(static_content|assets)/[\w./-]+", "/{assets}")]

batch_size_histogram = bentoml.metrics.Histogram(
    name="tuneserve_batch_size",
    documentation="Items merged into one ONNX Runtime call, per model",
    labelnames=["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
batch_seconds_histogram = bentoml.metrics.Histogram(
    name="tuneserve_batch_inference_seconds",
    documentation="Time of one batched ONNX Runtime call including pre/post-processing, per model",
    labelnames=["model"],
)


def observe_batches(model: str):
    size, seconds = batch_size_histogram.labels(model=model), batch_seconds_histogram.labels(model=model)

    def observe(items: int, elapsed: float) -> None:
        size.observe(items)
        seconds.observe(elapsed)

    return observe


# BentoML samples no traces by default, yet its OpenTelemetry middleware still builds a span per
# request, a visible share of the event loop's time on small requests. Unless tracing is asked for,
# skip it on /v1 and /v2 routes and the task APIs.
TRACING = (
    {"sample_rate": SETTINGS.trace_sample_rate}
    if SETTINGS.trace_sample_rate is not None
    else {"excluded_urls": ["/v1/", "/v2/", *(api_route(task) for task in TASKS.values())]}
)


# `bentoml.service` is the decorator at run time, but mypy reads the name as the `_bentoml_sdk.service`
# package it shadows.
@bentoml.service(  # type: ignore[operator]
    name="tuneserve",
    workers=SETTINGS.workers,
    # No max_concurrency here: BentoML would count a request from its headers, so slow uploads could
    # hold every place. ModelServer admits requests once their body is in (TUNESERVE_MAX_CONCURRENCY).
    traffic={"timeout": SETTINGS.timeout_s},
    logging={"access": {"enabled": SETTINGS.access_log}},
    tracing=TRACING,
)
# Decorators apply bottom-up and BentoML tries mounts in that order: v1 (the busiest) first, then
# the v2 app at the root, which would otherwise try its routes on every /v1 request.
@bentoml.asgi_app(V2_APP, path="/")
@bentoml.asgi_app(V1_APP, path="/v1")
@task_apis(reserved=["/v1", "/v2", *BENTOML_PATHS, "/static_content", "/assets"])
class TuneServe:
    def __init__(self) -> None:
        from serving.memory import settle_heap
        from serving.server import ModelServer

        self.server = ModelServer(SETTINGS, _loaded(LOADING), observe_batches)
        settle_heap(SETTINGS.gc_threshold)  # after the models are open, so they are frozen too

    def __is_ready__(self) -> bool:
        return self.server.ready()

    @bentoml.on_startup
    async def watch_builds(self) -> None:
        """Models built in the background (`tuneserve serve --build-missing`) are loaded as they land."""
        self.build_watcher = asyncio.get_running_loop().create_task(self.server.watch_builds())

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        """The Open Inference Protocol over gRPC, on this worker's event loop (TUNESERVE_GRPC_PORT)."""
        self.grpc = None
        if SETTINGS.grpc_port:
            from serving.protocols.grpc_v2 import start_grpc_server

            self.grpc = await start_grpc_server(lambda: self.server, SETTINGS)

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop(grace=SETTINGS.grace_s or None)


# `bentoml.service` turns the class into a `bentoml.Service`; mypy keeps a decorated class's own type.
# BentoML types the middleware as a class whose instances take the app; Starlette instantiates it
# with the app (`Middleware(cls, **options)`), as it does every ASGI middleware class.
cast("bentoml.Service[TuneServe]", TuneServe).add_asgi_middleware(
    UnroutablePaths,  # type: ignore[arg-type]
    prefixes=("/v1/", "/v2"),
)


def _edge(app):
    exact, patterns = route_table([("/v1", V1_APP), ("", V2_APP)])

    def served():
        return bentoml.get_current_service().server.runtime.models

    apis = [api.route for api in cast("bentoml.Service[TuneServe]", TuneServe).apis.values()]
    label = path_labeller(exact + BENTOML_PATHS + apis, patterns + BENTOML_PATTERNS, served, ("/v1/", "/v2/"))
    return EdgeApp(app, SETTINGS.max_headers, label)


if bentoml.server_context.worker_index is not None:  # a worker: its uvicorn is created after this import
    install(
        ConnectionLimits(
            header_timeout_s=SETTINGS.header_timeout_s,
            max_header_bytes=SETTINGS.max_header_kb * 1024,
            max_headers=SETTINGS.max_headers,
            body_min_rate=SETTINGS.body_min_rate_kb * 1024,
            body_grace_s=SETTINGS.body_grace_s,
            max_connections_per_client=SETTINGS.max_connections_per_client,
        ),
        edge=_edge,
    )
