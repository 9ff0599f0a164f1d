"""Serving settings: one object, read once from `TUNESERVE_*` environment variables and passed down.

Every limit and knob of the server is a field here, with its default and why; nothing else reads a
`TUNESERVE_*` variable. `docs/settings.md` is generated from this class (`python -m serving.settings`),
and a test checks the two agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "TUNESERVE_"


def tuneserve_home() -> Path:
    """Where the model repository (`exported/`), build runs and data caches (`runs/`) live:
    `TUNESERVE_HOME`, else the current directory. Never the installed package: site-packages is no
    place for models, and a wheel must behave like a checkout."""
    return Path(os.environ.get(f"{ENV_PREFIX}HOME") or ".").resolve()


class Settings(BaseSettings):
    """What the server, `tuneserve predict` and the Bento share. Frozen: change a copy
    (`settings.model_copy(update=...)`), never the object others hold."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    home: Path = Field(
        default_factory=tuneserve_home,
        description="folder holding the model repository (exported/) and build runs (runs/); default: the current directory",
    )
    repository: Path = Field(
        default_factory=lambda data: Path(data["home"]) / "exported",
        description="the model repository to serve; default: exported/ in the home folder",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="which models of the repository to load, comma-separated; empty = all",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto",
        description="auto tries TensorRT, then CUDA, then the CPU; cuda tries CUDA, then the CPU (no TensorRT engine builds); cpu never touches a GPU provider",
    )
    variant: str | None = Field(
        None,
        description="serve this variant (fp32, int8, ...) instead of the manifest's default for the device",
    )
    cuda_device: int = Field(0, ge=0, description="GPU index for the CUDA provider")
    cache: Path = Field(
        Path.home() / ".cache" / "tuneserve",
        description="writable folder for TensorRT engine and timing caches",
    )
    workers: int = Field(1, ge=1, description="BentoML worker processes; each loads every model")
    threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads per session; 0 = cores / workers"
    )
    max_batch: int = Field(64, ge=1, description="items merged into one ONNX Runtime call on the CPU")
    cpu_mem_arena: bool = Field(
        False,
        description="ONNX Runtime's CPU memory arena: keeps the largest run's buffers for good; off, they are freed after each run (benchmarks/results/ort_arena.md)",
    )
    # A CNN on the CPU gains no throughput per image from a larger batch (the engine's images/s are
    # flat from 1 to 8), while each call allocates its activations afresh (the arena is off) and a
    # batch's are several times larger: one image per call, with `image_slots` calls in flight, serves
    # more images/s than batches do (benchmarks/results/image_*.md). On a GPU batching pays, and
    # max_batch_gpu applies instead.
    max_batch_image: int = Field(
        1, ge=1, description="items per ONNX Runtime call for image models on the CPU"
    )
    # A CNN's call on the CPU parallelises poorly across intra-op threads, and worse while the server's
    # other threads (HTTP, decoding, masks) want the same cores: with two calls at once, one's
    # threads work while the other's wait (spinning is off, so waiting costs nothing)
    # (benchmarks/results/image_regions_*.md).
    image_slots: int = Field(
        2,
        ge=1,
        description="ONNX Runtime calls in flight at once per image model on the CPU (each on the session's intra-op threads)",
    )
    # A GPU's throughput grows with the batch well past where a CPU's stops, and TensorRT builds its
    # engine for batches up to this size (serving/sessions.py trt_profile): a larger batch than the
    # engine's would need a new engine, so the limit is fixed at start-up, not per request.
    max_batch_gpu: int = Field(
        128,
        ge=1,
        description="items merged into one ONNX Runtime call on a GPU (every modality); the largest batch of TensorRT's engines",
    )
    gc_threshold: int = Field(
        50_000,
        ge=0,
        description="objects allocated between collections of Python's youngest generation in a worker, whose start-up heap is frozen out of the collector (0: Python's defaults, nothing frozen)",
    )
    max_wait_ms: float = Field(
        2.0, ge=0, description="how long a batch waits for more items when the queue is nearly empty"
    )
    max_queue: int = Field(4096, ge=1, description="items queued per model before requests are answered 503")
    max_items: int = Field(256, ge=1, description="texts per request")
    max_text_chars: int = Field(20_000, ge=1, description="characters per text")
    max_files: int = Field(64, ge=1, description="files per multipart request")
    max_file_mb: float = Field(20.0, gt=0, description="size of one uploaded file (an image, a clip)")
    tabular_range_factor: float = Field(
        10.0,
        ge=0,
        description="table rows: a numeric value further outside its training range than this many times the range is a 400; 0 = no check",
    )
    explain_permutations: int = Field(
        8,
        ge=2,
        le=256,
        description="table models' explanations: feature orderings sampled per explained row (antithetic pairs)",
    )
    max_explain_rows: int = Field(
        16, ge=1, description="table rows per request that may ask for an explanation (`explain: true`)"
    )
    max_image_megapixels: float = Field(
        16.0,
        gt=0,
        description="pixels one image may decode to; a larger JPEG is decoded at 1/2, 1/4 or 1/8 scale when the model needs no more",
    )
    max_body_mb: float = Field(
        25.0, gt=0, description="request body, JSON and multipart alike: 413 before a larger body is read"
    )
    max_concurrency: int = Field(
        256,
        ge=1,
        description="inference requests in flight per worker, counted once their body is read; more are answered 429",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="seconds a connection has to send a request's line and headers (408, closed)"
    )
    max_header_kb: int = Field(
        64,
        ge=1,
        description="request line and headers, in KiB: 431 and closed beyond it, before it is parsed",
    )
    max_headers: int = Field(100, ge=1, description="request headers: 431 beyond it")
    body_min_rate_kb: float = Field(
        1.0,
        ge=0,
        description="KiB/s a request body must average once its headers are in (after the grace period); slower: 408",
    )
    body_grace_s: float = Field(
        10.0, ge=0, description="seconds a request body may take before the minimum rate applies"
    )
    max_connections_per_client: int = Field(
        512,
        ge=1,
        description="open connections per client address in a worker; more are answered 503 and closed",
    )
    timeout_s: float = Field(60.0, gt=0, description="seconds before a request times out (504)")
    grace_s: int = Field(
        0,
        ge=0,
        description="`tuneserve serve`: seconds after SIGTERM before running requests are cancelled; 0 = wait for all",
    )
    ready_policy: Literal["all", "any"] = Field(
        "all",
        description="/readyz: all = 503 while any model of the repository was refused; any = 200 once one serves",
    )
    grpc_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="serve the Open Inference Protocol over gRPC on this port too, in each worker; 0 = off",
    )
    grpc_host: str = Field("127.0.0.1", description="address the gRPC server binds (0.0.0.0 in a container)")
    api_key: str | None = Field(
        None,
        repr=False,
        description="when set, /v1 routes (but the OpenAPI document) need `Authorization: Bearer <key>` or `X-API-Key: <key>`",
    )
    access_log: bool = Field(
        False, description="one access-log line per request (costs throughput on small models)"
    )
    trace_sample_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="OpenTelemetry sampling for /v1 and /v2 routes; unset = they are not traced at all",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        return [m.strip() for m in value.split(",") if m.strip()] if isinstance(value, str) else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _strip_key(cls, value: object) -> object:
        return (value.strip() or None) if isinstance(value, str) else value

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    def batch_limit(self, modality: str, device: str) -> int:
        """Items per ONNX Runtime call for a model of this modality on this device ("cpu"/"gpu")."""
        if device == "gpu":
            return self.max_batch_gpu
        if modality == "image":
            return min(self.max_batch, self.max_batch_image)
        return self.max_batch

    def intra_op_threads(self) -> int:
        if self.threads > 0:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.workers)

    def slots(self, modality: str | None, device: str) -> int:
        """ONNX Runtime calls in flight at once for a model of this modality on this device."""
        if device == "cpu" and modality == "image":
            return self.image_slots
        return 1


def settings_table() -> str:
    """The Markdown page of every setting (docs/settings.md)."""
    rows = [
        "# Settings",
        "",
        "Environment variables read once at start-up by `serving/settings.py` (generated by",
        "`python -m serving.settings`; a test checks this page against the code).",
        "",
        "| variable | default | what it does |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        if name in ("home", "repository"):  # derived from where it runs: the description says how
            default = None
        elif field.default_factory is not None:
            default = field.default_factory()  # type: ignore[call-arg]
        else:
            default = field.default
        if isinstance(default, Path):
            default = str(default).replace(str(Path.home()), "~")
        shown = "" if default in (None, []) else f"`{default}`"
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
