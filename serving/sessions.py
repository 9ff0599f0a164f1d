"""ONNX Runtime session factory: TensorRT → CUDA → CPU, keeping only what actually initialises."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = frozenset(PROVIDER_ORDER[:2])
CPU = "CPUExecutionProvider"


@dataclass
class SessionInfo:
    provider: str
    fallbacks: list[str] = field(default_factory=list)  # why each better provider was not used

    @property
    def device(self) -> str:
        return "gpu" if self.provider in GPU_PROVIDERS else "cpu"


def candidate_providers(device: str = "auto") -> list[str]:
    """Providers to try, best first, from what this onnxruntime build offers."""
    if device == "cpu":
        return [CPU]
    available = set(ort.get_available_providers())
    return [p for p in PROVIDER_ORDER if p in available and p != CPU] + [CPU]


def session_options(threads: int, cpu_arena: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # The arena keeps the buffers of the largest run for reuse; without it they are freed after each
    # run, so a burst of large requests does not leave the worker at its high-water mark.
    options.enable_cpu_mem_arena = cpu_arena
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the cores the HTTP workers and other models need between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def provider_options(provider: str, cache_dir: Path, cuda_device: int = 0) -> dict:
    if provider == "TensorrtExecutionProvider":
        return {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache_dir),
        }
    if provider == "CUDAExecutionProvider":
        return {"device_id": cuda_device}
    return {}


@contextlib.contextmanager
def _quiet_probe():
    """ORT prints provider failures to stdout and its C++ log; a probe that falls back is not an error
    worth a banner (the reason is kept in SessionInfo.fallbacks and logged once)."""
    said = io.StringIO()
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(said):
            yield said
    finally:
        ort.set_default_logger_severity(2)


# Providers that failed to initialise in this process, and why: later sessions skip them instead of
# paying for another failed probe (each probe builds a whole CPU session as ORT falls back).
_unusable: dict[str, str] = {}
# Models load on several threads; a probe redirects the process's stdout and ORT's global log level,
# so one provider probe runs at a time (and the others then know whether it failed).
_probe_lock = threading.Lock()
# Providers that initialised once in this process: later sessions on them need no lock (a TensorRT
# engine build would otherwise hold every other model's load).
_working: set[str] = set()


def usable_accelerators(providers: list[str]) -> list[str]:
    """The non-CPU providers among `providers` not already known to fail in this process."""
    return [p for p in providers if p != CPU and p not in _unusable]


def create_session(
    model_path: str | Path,
    threads: int,
    providers: list[str] | None = None,
    cache_dir: Path | None = None,
    cuda_device: int = 0,
    cpu_arena: bool = True,
) -> tuple[ort.InferenceSession, SessionInfo]:
    """Open `model_path` on the best provider that initialises; every failed try is recorded.
    `cache_dir` (TensorRT engines) is only touched when a GPU provider is tried."""
    providers = providers or candidate_providers()
    cache_dir = cache_dir or Path.home() / ".cache" / "tuneserve"
    fallbacks: list[str] = []
    for provider in providers:
        if provider == CPU:
            break
        known_good = provider in _working
        # A provider's first try is a probe (serialised, its output kept quiet); after one success the
        # sessions on it are built side by side.
        with _probe_lock if not known_good else contextlib.nullcontext():
            if provider in _unusable:
                fallbacks.append(f"{provider}: skipped ({_unusable[provider]})")
                continue
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
                with _quiet_probe() if not known_good else contextlib.nullcontext(io.StringIO()) as said:
                    session = ort.InferenceSession(
                        str(model_path),
                        sess_options=session_options(threads, cpu_arena),
                        providers=[(provider, provider_options(provider, cache_dir, cuda_device)), CPU],
                    )
            except Exception as exc:  # a provider that fails to initialise must not stop serving
                fallbacks.append(f"{provider}: {type(exc).__name__}: {exc}")
                _unusable[provider] = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            if session.get_providers()[0] == provider:
                _working.add(provider)
                return session, SessionInfo(provider, fallbacks)
            detail = " ".join(said.getvalue().split())[:300]
            fallbacks.append(f"{provider}: did not initialise ({detail or 'no usable device or libraries'})")
            _unusable[provider] = f"did not initialise: {detail or 'no usable device or libraries'}"
    if fallbacks:
        log.info("%s: serving on the CPU; %s", Path(model_path).name, "; ".join(fallbacks))
    session = ort.InferenceSession(
        str(model_path), sess_options=session_options(threads, cpu_arena), providers=[CPU]
    )
    return session, SessionInfo(CPU, fallbacks)
