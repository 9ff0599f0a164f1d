"""The BentoML service: loads every model of the repository once per worker and mounts the v1 routes.

Run it with `bentoml serve serving.service:TuneServe` (or `make serve`). Settings come from
TUNESERVE_* environment variables (see serving/settings.py).
"""

from __future__ import annotations

import os

# Pre-processing calls numpy's BLAS on small matrices from several threads at once (one per
# request being prepared); a multi-threaded BLAS would fight ONNX Runtime's threads for the cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import bentoml  # noqa: E402

from serving.batching import MicroBatcher  # noqa: E402
from serving.http import http_app  # noqa: E402
from serving.runtime import Runtime  # noqa: E402
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
        settings = Settings()
        self.runtime = Runtime(settings)
        self.batchers = {
            name: MicroBatcher(
                model.predictor,
                max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms,
                max_queue=settings.max_queue,
                on_batch=_observer(name),
            )
            for name, model in self.runtime.models.items()
        }
        http_app.state.service = self
