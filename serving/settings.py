"""Serving settings, read from environment variables so the Bento, the CLI and tests share them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# One uploaded file (an image, a clip) may be at most this large.
MAX_FILE_BYTES = 20 * 1024 * 1024


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


@dataclass
class Settings:
    repository: Path = field(default_factory=lambda: Path(os.environ.get("TUNESERVE_REPOSITORY", PROJECT_ROOT / "exported")))
    # "auto" tries TensorRT, then CUDA, then the CPU; "cpu" never touches a GPU provider.
    device: str = field(default_factory=lambda: os.environ.get("TUNESERVE_DEVICE", "auto"))
    variant: str | None = field(default_factory=lambda: os.environ.get("TUNESERVE_VARIANT") or None)
    workers: int = field(default_factory=lambda: _int("TUNESERVE_WORKERS", 1))
    # ONNX Runtime intra-op threads per session; 0 = cores / workers.
    threads: int = field(default_factory=lambda: _int("TUNESERVE_THREADS", 0))
    max_batch_size: int = field(default_factory=lambda: _int("TUNESERVE_MAX_BATCH", 64))
    # image models on the CPU: a CNN gains no throughput past a few images per call (EfficientNet-
    # Lite0 INT8: 2.6 ms/image at batch 1, 2.6 at 8, 2.9 at 32), while ONNX Runtime's memory arena
    # keeps the largest batch's activations for good: one 64-image request to each image model took
    # the worker from 284 MiB to 2.3 GiB with batches of 64; 711 MiB at 8, 517 MiB at 4, 365 MiB
    # at 1, and the requests were faster too. On a GPU batching pays, and the cap does not apply.
    max_batch_image: int = field(default_factory=lambda: _int("TUNESERVE_MAX_BATCH_IMAGE", 4))
    max_wait_ms: float = field(default_factory=lambda: _float("TUNESERVE_MAX_WAIT_MS", 2.0))
    max_queue: int = field(default_factory=lambda: _int("TUNESERVE_MAX_QUEUE", 4096))
    max_items_per_request: int = field(default_factory=lambda: _int("TUNESERVE_MAX_ITEMS", 256))
    # requests in flight (BentoML splits it over the workers) before it answers 429; seconds before a
    # request times out (504)
    max_concurrency: int = field(default_factory=lambda: _int("TUNESERVE_MAX_CONCURRENCY", 256))
    timeout_s: float = field(default_factory=lambda: _float("TUNESERVE_TIMEOUT_S", 60.0))
    # `tuneserve serve`: seconds after SIGTERM before requests still running are cancelled; 0 = wait
    # for all of them (each is bounded by timeout_s anyway)
    grace_s: int = field(default_factory=lambda: _int("TUNESERVE_GRACE_S", 0))
    # which models of the repository to load (comma-separated names); empty = all
    models: list[str] = field(default_factory=lambda: [m.strip() for m in os.environ.get("TUNESERVE_MODELS", "").split(",") if m.strip()])
    max_text_chars: int = field(default_factory=lambda: _int("TUNESERVE_MAX_TEXT_CHARS", 20_000))
    # request body limit, JSON and multipart alike: 413 before a larger body is read
    max_body_bytes: int = field(default_factory=lambda: int(_float("TUNESERVE_MAX_BODY_MB", 25.0) * 1024 * 1024))
    # /readyz: "all" = 503 while any model of the repository was refused; "any" = 200 once one serves
    ready_policy: str = field(default_factory=lambda: os.environ.get("TUNESERVE_READY_POLICY", "all"))
    # when set, every /v1 route but the OpenAPI document needs `Authorization: Bearer <key>` or
    # `X-API-Key: <key>`; health and metrics routes stay open
    api_key: str | None = field(default_factory=lambda: os.environ.get("TUNESERVE_API_KEY", "").strip() or None, repr=False)

    def __post_init__(self) -> None:
        if self.ready_policy not in ("all", "any"):
            raise ValueError(f"TUNESERVE_READY_POLICY must be 'all' or 'any', not {self.ready_policy!r}")

    def batch_limit(self, modality: str, device: str) -> int:
        """Items per ONNX Runtime call for a model of this modality on this device ("cpu"/"gpu")."""
        if modality == "image" and device == "cpu":
            return min(self.max_batch_size, self.max_batch_image)
        return self.max_batch_size

    def intra_op_threads(self) -> int:
        if self.threads > 0:
            return self.threads
        return max(1, (os.cpu_count() or 1) // max(1, self.workers))
