"""The BentoML service: loads every model of the repository once per worker and mounts the v1 routes.

Run it with `bentoml serve serving.service:TuneServe` (or `make serve`). Settings come from
TUNESERVE_* environment variables (see serving/settings.py).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from concurrent.futures import Future

# Pre-processing calls numpy's BLAS on small matrices from several threads at once (one per
# request being prepared); a multi-threaded BLAS would fight ONNX Runtime's threads for the cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _load_runtime(settings):
    # ONNX Runtime, OpenCV and the tokenizers load here, not when this module is imported: the
    # `bentoml serve` parent process imports the module only to read the service's configuration.
    from serving.runtime import Runtime

    return Runtime(settings)


def _preload() -> Future | None:
    """In a BentoML worker, start opening the models while BentoML finishes its own start-up.

    The worker imports this module, then builds its ASGI app and its server and only then creates
    the service instance; creating the ONNX Runtime sessions (mostly native code, which releases the
    GIL) overlaps with that instead of following it. Elsewhere (the parent process, `bentoml build`,
    tests importing the module) nothing is loaded until the service is instantiated.
    """
    context = sys.modules.get("bentoml._internal.context")  # imported by the worker before us
    if context is None or getattr(context.server_context, "worker_index", None) is None:
        return None
    future: Future = Future()

    def run() -> None:
        try:
            from serving.settings import Settings

            future.set_result(_load_runtime(Settings()))
        except BaseException as exc:  # re-raised by __init__
            future.set_exception(exc)

    threading.Thread(target=run, name="tuneserve-preload", daemon=True).start()
    return future


_PRELOAD = _preload()


def _preloaded():
    """The runtime the preload thread opened, or None to load here: no preload in this process, or
    an ImportError in the thread (first imports racing the main thread's can, rarely, trip
    importlib's deadlock detection; everything is imported by now, so loading again is safe)."""
    if _PRELOAD is None:
        return None
    try:
        return _PRELOAD.result()
    except ImportError as exc:
        import logging

        logging.getLogger(__name__).warning("opening the models in the background failed (%s); opening them now", exc)
        return None

import bentoml  # noqa: E402

from serving.batching import MicroBatcher  # noqa: E402
from serving.http import http_app  # noqa: E402
from serving.settings import Settings  # noqa: E402

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
batch_size_histogram = bentoml.metrics.Histogram(
    name="tuneserve_batch_size",
    documentation="Items merged into one ONNX Runtime call, per model",
    labelnames=["model"],
    buckets=BATCH_BUCKETS,
)
batch_seconds_histogram = bentoml.metrics.Histogram(
    name="tuneserve_batch_inference_seconds",
    documentation="Time of one batched ONNX Runtime call including pre/post-processing, per model",
    labelnames=["model"],
)


def _observer(model: str):
    def observe(size: int, seconds: float) -> None:
        batch_size_histogram.labels(model=model).observe(size)
        batch_seconds_histogram.labels(model=model).observe(seconds)

    return observe


# One line of access log per request costs measurable throughput on small models; opt in with
# TUNESERVE_ACCESS_LOG=1. Request counts and latencies are in /metrics either way.
ACCESS_LOG = os.environ.get("TUNESERVE_ACCESS_LOG", "0") == "1"
# BentoML samples no traces by default, yet its OpenTelemetry middleware still builds a span per
# request (~20% of the event loop's time here). Unless tracing is asked for, skip it on /v1 routes.
TRACING = {"sample_rate": float(os.environ["TUNESERVE_TRACE_SAMPLE_RATE"])} if os.environ.get("TUNESERVE_TRACE_SAMPLE_RATE") else {"excluded_urls": ["/v1/"]}


_SETTINGS = Settings()




@bentoml.service(
    name="tuneserve",
    workers=_SETTINGS.workers,
    traffic={"timeout": _SETTINGS.timeout_s, "max_concurrency": _SETTINGS.max_concurrency},
    logging={"access": {"enabled": ACCESS_LOG}},
    tracing=TRACING,
)
@bentoml.asgi_app(http_app, path="/v1")
class TuneServe:
    def __init__(self) -> None:
        self.settings = Settings()
        self.runtime = _preloaded() or _load_runtime(self.settings)
        for model in self.runtime.models.values():
            self._attach_batcher(model)
        self._reload_lock = asyncio.Lock()
        http_app.state.service = self

    def _attach_batcher(self, model) -> None:
        model.batcher = MicroBatcher(
            model.predictor,
            max_batch_size=self.settings.batch_limit(model.manifest.modality, model.session_info.device),
            max_wait_ms=self.settings.max_wait_ms,
            max_queue=self.settings.max_queue,
            on_batch=_observer(model.name),
        )

    def __is_ready__(self) -> bool:
        """/readyz: 503 until at least one model serves; with TUNESERVE_READY_POLICY=all (the default),
        also while a model of the repository was refused and none of its versions serves (a bad
        model halts a rolling update). A refused new version whose old one keeps serving after a
        reload does not take a serving pod out."""
        if not self.runtime.models:
            return False
        return self.settings.ready_policy == "any" or not self.runtime.broken

    async def reload(self) -> dict:
        """Swap in the models that changed on disk (see Runtime.reload); new models get their batcher
        before they are published. A replaced model's batcher keeps running until every request
        already admitted to it is answered: it is closed after the request timeout, by which time
        none can be waiting. The work is shielded: a client that gives up (or the request timeout)
        does not leave a reload half done."""
        return await asyncio.shield(asyncio.ensure_future(self._reload()))

    async def _reload(self) -> dict:
        async with self._reload_lock:
            report, retired = await asyncio.to_thread(self.runtime.reload, self._attach_batcher)
            loop = asyncio.get_running_loop()
            for old in retired:
                loop.call_later(self.settings.timeout_s + 1, old.batcher.close)
            return report
