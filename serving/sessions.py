"""ONNX Runtime session factory: TensorRT → CUDA → CPU, keeping only what actually initialises."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import logging
import platform
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
    """Providers to try, best first, from what this onnxruntime build offers: every one for `auto`,
    CUDA and the CPU for `cuda`, the CPU alone for `cpu`."""
    if device == "cpu":
        return [CPU]
    available = set(ort.get_available_providers())
    wanted = PROVIDER_ORDER[1:] if device == "cuda" else PROVIDER_ORDER
    return [p for p in wanted if p in available and p != CPU] + [CPU]


def why_cpu(device: str) -> list[str]:
    """Why a model goes straight to the CPU without trying a GPU provider (`usable_accelerators` is
    empty): said in SessionInfo.fallbacks, the log and GET /v1/models."""
    if device == "cpu":
        return ["TUNESERVE_DEVICE=cpu"]
    if candidate_providers(device) == [CPU]:
        return [f"this onnxruntime build has no GPU provider ({', '.join(ort.get_available_providers())})"]
    return []  # GPU providers known to fail: create_session says why it skips each


def cpu_int8_products() -> str:
    """How this CPU multiplies INT8 on ONNX Runtime's CPU provider: "vnni" (exact 8-bit dot products,
    AVX-512 VNNI or AVX-VNNI), "avx2" (saturating 8-bit pairs, so the sessions run INT8 weights that
    could saturate as UINT8: correct, slower; see `session_options`), or the machine's name where it is
    not x86 (or its flags cannot be read). Recorded beside INT8 timings: they differ by CPU class."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() or "unknown"
    flags = set(
        next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    )
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "vnni"
    return "avx2" if "avx2" in flags else platform.machine() or "unknown"


def session_options(
    threads: int, cpu_arena: bool = True, flush: bool = True, fuse_skip_layernorm: bool = False
) -> ort.SessionOptions:
    """The server's session options; `flush=False` leaves denormals to the pool threads as ONNX
    Runtime's defaults do, and `fuse_skip_layernorm=True` lets ONNX Runtime fuse a residual add into
    the LayerNormalization after it, which GPU providers want (benchmarks time the engine before
    with both)."""
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
    # The graphs' float layers are float on purpose (quantise.float_layers): ORT's
    # WeightBiasQuantization would round their weights to INT8 per tensor whenever their input comes
    # from a DequantizeLinear, and a depthwise convolution quantised per tensor loses most of its
    # signal (tests/test_export_quantise.py).
    #
    # SkipLayerNormalization, the fused residual add and LayerNormalization, is fast on CUDA but its
    # CPU kernel took 0.88 ms where the LayerNormalization it replaces takes 0.14 ms on a batch of
    # 32 texts (a transformer encoder runs two per layer), so a CPU session keeps the two nodes.
    disabled = ["WeightBiasQuantization"] + ([] if fuse_skip_layernorm else ["SkipLayerNormFusion"])
    options.add_session_config_entry("optimization.disable_specified_optimizers", ";".join(disabled))
    # On x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) ONNX Runtime's UINT8×INT8 kernels add
    # pairs of products in 16 bits with saturation (VPMADDUBSW): a large activation times a large
    # weight clips, and a quantised EfficientNet's logits fell from 26 to 9 dB SNR on such a CPU while
    # the same graph was right on a VNNI one. With this entry ONNX Runtime turns the INT8 weights that
    # can saturate into UINT8 on those CPUs only (exact 32-bit products, somewhat slower); VNNI CPUs
    # and GPUs are unaffected.
    options.add_session_config_entry("session.x64quantprecision", "1")
    if flush:  # on the pool threads; the calling thread's: denormals_flushed
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    options.log_severity_level = 3
    return options


def provider_options(
    provider: str,
    cache_dir: Path,
    cuda_device: int = 0,
    fp16: bool = False,
    trt_profile: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Options of a GPU provider. TensorRT: engines and kernel timings cached in `cache_dir`, so a
    restart loads the engine instead of building it again; float16 kernels only for a float16 graph
    (`fp16`), since with an fp32 variant they would bring back the precision its gate turned down;
    `trt_profile` (see `trt_profile`) fixes the range of the dynamic axes, so one engine is built for
    every batch the server sends instead of a new one whenever a larger shape arrives."""
    if provider == "TensorrtExecutionProvider":
        return {
            "device_id": cuda_device,
            "trt_fp16_enable": fp16,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache_dir),
            **(trt_profile or {}),
        }
    if provider == "CUDAExecutionProvider":
        return {"device_id": cuda_device}
    return {}


def trt_profile(
    inputs: Sequence[tuple[str, Sequence[str | int]]], max_batch: int, max_length: int | None = None
) -> dict[str, str]:
    """TensorRT's optimisation profile for a model's inputs (name, shape from the manifest's
    signature): the `batch` axis from 1 to `max_batch` (the GPU batch limit), a `sequence` axis from
    1 to `max_length` (the tokenizer's truncation), fixed axes as they are. Kernels are chosen for the
    largest shapes, the batches that decide throughput under load. An axis of another name has no
    known range: then no profile ({}), and TensorRT sizes engines from the shapes it sees."""
    largest = {"batch": max_batch, "sequence": max_length}
    lows, highs = [], []
    for name, shape in inputs:
        low, high = [], []
        for dim in shape:
            top = dim if isinstance(dim, int) else largest.get(dim)
            if not top or top < 1:
                return {}
            low.append(dim if isinstance(dim, int) else 1)
            high.append(top)
        lows.append(f"{name}:{'x'.join(map(str, low))}")
        highs.append(f"{name}:{'x'.join(map(str, high))}")
    if not lows:
        return {}
    return {
        "trt_profile_min_shapes": ",".join(lows),
        "trt_profile_opt_shapes": ",".join(highs),
        "trt_profile_max_shapes": ",".join(highs),
    }


def provider_chain(
    provider: str,
    cache_dir: Path,
    cuda_device: int = 0,
    fp16: bool = False,
    trt_profile: Mapping[str, str] | None = None,
) -> list[tuple[str, dict[str, Any]] | str]:
    """What a session on `provider` is opened with: the provider, then where the operators it cannot
    take run. Behind TensorRT that is CUDA (when this build has it), so they stay on the GPU instead
    of costing a copy to the CPU and back; the CPU comes last."""
    chain: list[tuple[str, dict[str, Any]] | str] = [
        (provider, provider_options(provider, cache_dir, cuda_device, fp16, trt_profile))
    ]
    cuda = PROVIDER_ORDER[1]
    if provider == PROVIDER_ORDER[0] and cuda in ort.get_available_providers():
        chain.append((cuda, provider_options(cuda, cache_dir, cuda_device)))
    return [*chain, CPU]


_MXCSR_OFFSET = 28  # glibc's fenv_t on x86-64: the x87 environment (28 bytes), then MXCSR
_FLUSH_TO_ZERO, _DENORMALS_ARE_ZERO = 0x8000, 0x0040
_FENV_BYTES = 32


class _Fenv:
    """The calling thread's floating-point environment through libm's `fegetenv`/`fesetenv`, on
    x86-64 Linux; `usable` is settled on first use (the layout is checked by reading a denormal back)."""

    def __init__(self) -> None:
        self.libm: Any = None
        self.usable: bool | None = None
        self._lock = threading.Lock()

    def check(self) -> bool:
        if self.usable is not None:
            return self.usable
        with self._lock:
            if self.usable is None:
                self.usable = self._probe()
        return self.usable

    def _probe(self) -> bool:
        if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
            return False
        try:
            self.libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
            saved = self.flush()  # None: already on here, or no environment to read
            try:
                tiny = np.array([1e-39], np.float32)  # a denormal: read as zero while the flags hold
                return float((tiny * np.float32(1.0))[0]) == 0.0
            finally:
                if saved is not None:
                    self.libm.fesetenv(saved)
        except (OSError, AttributeError):
            return False

    def save(self) -> Any:
        """The calling thread's environment (None where `fegetenv` failed)."""
        saved = (ctypes.c_uint8 * _FENV_BYTES)()
        return saved if self.libm.fegetenv(saved) == 0 else None

    def flush(self) -> Any:
        """Set flush-to-zero and denormals-are-zero; the environment to restore, or None where both
        were already on (or `fegetenv` failed)."""
        saved = self.save()
        if saved is None:
            return None
        mxcsr = int.from_bytes(bytes(saved[_MXCSR_OFFSET:]), "little")
        flushed = mxcsr | _FLUSH_TO_ZERO | _DENORMALS_ARE_ZERO
        if flushed == mxcsr:
            return None
        env = (ctypes.c_uint8 * _FENV_BYTES).from_buffer_copy(saved)
        env[_MXCSR_OFFSET:] = list(flushed.to_bytes(4, "little"))
        self.libm.fesetenv(env)
        return saved


_FENV = _Fenv()


@contextlib.contextmanager
def denormals_flushed() -> Iterator[bool]:
    """Flush-to-zero and denormals-are-zero on the calling thread for the block (x86-64 Linux), then
    the thread's own environment back; yields whether they hold. ONNX Runtime sets them on its own
    pool threads (`session.set_denormal_as_zero`) but not on the thread that calls `run`, which
    computes its share of every operator. A softmax over masked positions (exp of about -1e4) makes
    denormals there, and each costs a slow microcode path: the masked softmax of a padded text batch
    ran five times slower than one without padding. Answers change only where a value is below
    1.2e-38, which is 0 for any purpose here. The caller's state is restored because it is the
    caller's: numpy, or a property-testing library, on that thread must see IEEE arithmetic."""
    if not _FENV.check():
        yield False
        return
    saved = _FENV.flush()
    try:
        yield True
    finally:
        if saved is not None:
            _FENV.libm.fesetenv(saved)


@contextlib.contextmanager
def fenv_kept() -> Iterator[None]:
    """The calling thread's floating-point environment restored after the block. ONNX Runtime sets
    flush-to-zero and denormals-are-zero on the thread that opens the process's first session when
    its options ask for them on the pool threads (`session.set_denormal_as_zero`), and leaves them
    there: in the server's main thread, a test runner's or a notebook's, where arithmetic must stay
    IEEE."""
    saved = _FENV.save() if _FENV.check() else None
    try:
        yield
    finally:
        if saved is not None:
            _FENV.libm.fesetenv(saved)


class CpuSession(ort.InferenceSession):
    """An `InferenceSession` whose `run` flushes denormals on the calling thread while it runs
    (`denormals_flushed`); opening it leaves the opening thread's floating-point state as it was
    (`fenv_kept`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with fenv_kept():
            super().__init__(*args, **kwargs)

    def run(
        self,
        output_names: Sequence[str] | None,
        input_feed: Mapping[str, Any],
        run_options: ort.RunOptions | None = None,
    ) -> Any:
        with denormals_flushed():
            return super().run(output_names, input_feed, run_options)


class BoundSession:
    """A session on a GPU provider, run through I/O binding: each input is copied to the device once
    from its numpy array, and the outputs, left on the device by the run, are copied back once after
    it. `run(output_names, feeds)` answers like `InferenceSession.run`, so the serving tasks call
    either the same way; anything else is the session's own. The CPU provider keeps `session.run`
    (with `device_type="cpu"` this class runs there too, which is how it is tested without a GPU).

    The first run is timed and logged: TensorRT builds its engine then (unless the cache holds it),
    and CUDA loads its kernels."""

    def __init__(self, session: ort.InferenceSession, device_type: str = "cuda", device_id: int = 0) -> None:
        self.session = session
        self.device_type, self.device_id = device_type, device_id
        self.output_names = [o.name for o in session.get_outputs()]
        self._first_run = True

    def run(
        self,
        output_names: Sequence[str] | None,
        input_feed: Mapping[str, np.ndarray],
        run_options: ort.RunOptions | None = None,
    ) -> list[np.ndarray]:
        binding = self.session.io_binding()
        for name, value in input_feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in output_names or self.output_names:
            binding.bind_output(name, self.device_type, self.device_id)
        started = time.perf_counter()
        with denormals_flushed():  # for the operators a GPU provider leaves on the CPU
            self.session.run_with_iobinding(binding, run_options)
        outputs = binding.copy_outputs_to_cpu()
        if self._first_run:
            self._first_run = False
            log.info(
                "first run on %s: %.2f s (a TensorRT engine is built in it unless the cache holds one)",
                self.session.get_providers()[0],
                time.perf_counter() - started,
            )
        return outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


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


def _provider_error(printed: str) -> str:
    """What ORT printed when a provider did not initialise, without its banner and C++ source
    location: e.g. "Please install TensorRT libraries as mentioned in the GPU requirements page..."."""
    text = re.sub(r"\*+|EP Error|/onnxruntime_src/\S+|void [\w:]+\([^)]*\)", " ", printed)
    text = re.sub(r"\s*when using \[.*", "", text, flags=re.S)  # the options it was given, and "retrying"
    return " ".join(text.split())[:300]


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
    fp16: bool = False,
    trt_profile: Mapping[str, str] | None = None,
) -> tuple[Any, SessionInfo]:
    """Open `model_path` on the best provider that initialises; every failed try is recorded.
    `cache_dir` (TensorRT engines) is only touched when a GPU provider is tried. On a GPU provider the
    session comes back as a `BoundSession`, on the CPU as a `CpuSession` (an `InferenceSession`); both answer
    `run(output_names, feeds)`. `fp16` and `trt_profile`: see `provider_options`."""
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
                chain = provider_chain(provider, cache_dir, cuda_device, fp16, trt_profile)
                started = time.perf_counter()
                with (
                    _quiet_probe() if not known_good else contextlib.nullcontext(io.StringIO()) as said,
                    fenv_kept(),
                ):
                    session = ort.InferenceSession(
                        str(model_path),
                        sess_options=session_options(threads, cpu_arena, fuse_skip_layernorm=True),
                        providers=chain,
                    )
            except Exception as exc:  # a provider that fails to initialise must not stop serving
                fallbacks.append(f"{provider}: {type(exc).__name__}: {exc}")
                _unusable[provider] = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            if session.get_providers()[0] == provider:
                _working.add(provider)
                log.info(
                    "%s: session on %s in %.2f s%s",
                    Path(model_path).name,
                    provider,
                    time.perf_counter() - started,
                    f" (engine cache {cache_dir})" if provider == "TensorrtExecutionProvider" else "",
                )
                return BoundSession(session, "cuda", cuda_device), SessionInfo(provider, fallbacks)
            detail = _provider_error(said.getvalue())
            fallbacks.append(f"{provider}: did not initialise ({detail or 'no usable device or libraries'})")
            _unusable[provider] = f"did not initialise: {detail or 'no usable device or libraries'}"
    if fallbacks:  # the runtime logs them with the model's name
        log.debug("%s: serving on the CPU; %s", Path(model_path).name, "; ".join(fallbacks))
    session = CpuSession(str(model_path), sess_options=session_options(threads, cpu_arena), providers=[CPU])
    return session, SessionInfo(CPU, fallbacks)
