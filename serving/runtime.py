"""The serving runtime: every model of a repository loaded once, with its session and predictor.

The HTTP service and `tuneserve predict` both go through `Runtime`, so what one can do the other can.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.errors import ManifestError, RequestError, UnknownModel
from serving.manifest import MANIFEST_FILE, Manifest, asset_files, load_manifest, verify_files
from serving.sessions import (
    SessionInfo,
    candidate_providers,
    create_session,
    trt_profile,
    usable_accelerators,
    why_cpu,
)
from serving.settings import Settings
from serving.tasks import TASKS, ServingTask, get_task, serves

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    manifest: Manifest
    directory: Path
    variant: str
    session_info: SessionInfo
    task: ServingTask  # the model's pre-processing, inference and answers
    stamp: str = ""  # sha256 of the manifest file this model was loaded from (reload compares it)
    batcher: Any = None  # the server's MicroBatcher for this model (None outside the server)
    views: dict[str, Any] = field(default_factory=dict)  # what protocols work out once per model (v2 tensors)

    @property
    def name(self) -> str:
        return self.manifest.name

    def public(self) -> dict[str, Any]:
        info = self.manifest.public(self.variant) | self.task.describe()
        info["provider"] = self.session_info.provider
        info["provider_fallbacks"] = self.session_info.fallbacks  # why not a better provider
        return info


def load_model(directory: Path, settings: Settings) -> LoadedModel:
    """Open one model folder. Every file the server opens (the chosen variant, the pre-processing
    assets) is checked against its sha256 in the manifest first; a mismatch raises ManifestError."""
    try:
        manifest_bytes = (directory / MANIFEST_FILE).read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{directory / MANIFEST_FILE}: no manifest") from None
    manifest = load_manifest(
        directory, verify=False, raw=manifest_bytes
    )  # the stamp and the parse see the same bytes
    try:
        task_class = get_task(manifest.task)
    except ValueError as exc:
        raise ManifestError(f"model {manifest.name!r}: {exc}") from None
    verify_files(directory, manifest, only=asset_files(manifest))
    stamp = hashlib.sha256(manifest_bytes).hexdigest()

    providers = candidate_providers(settings.device)
    if not usable_accelerators(providers):  # no GPU provider can work here: straight to the CPU variant
        variant = manifest.variant_for("cpu", settings.variant)
        session, info = open_variant(directory, manifest, variant, settings, providers)
        info.fallbacks = why_cpu(settings.device) + info.fallbacks
        return LoadedModel(
            manifest, directory, variant, info, task_class(directory, manifest, session, settings), stamp
        )
    # Variant choice depends on the device, which is known only once a session initialises: try the
    # GPU variant on the GPU providers first, and the CPU variant on the CPU.
    gpu_variant = manifest.variant_for("gpu", settings.variant)
    session, info = open_variant(directory, manifest, gpu_variant, settings, providers)
    variant = gpu_variant
    if info.device == "cpu":
        cpu_variant = manifest.variant_for("cpu", settings.variant)
        if cpu_variant != gpu_variant:
            session, _ = open_variant(directory, manifest, cpu_variant, settings, ["CPUExecutionProvider"])
        variant = cpu_variant
    return LoadedModel(
        manifest, directory, variant, info, task_class(directory, manifest, session, settings), stamp
    )


def open_variant(
    directory: Path, manifest: Manifest, variant: str, settings: Settings, providers: list[str]
) -> tuple[Any, SessionInfo]:
    """A session on one variant of a model (its file checked against the manifest first), on the
    first of `providers` that initialises: the server's sessions, and benchmarks/gpu_check.py's.
    TensorRT gets float16 kernels for a float16 variant only, and an engine sized for the GPU batch
    limit and the tokenizer's longest sequence."""
    verify_files(directory, manifest, only={manifest.variants[variant].file})
    return create_session(
        directory / manifest.variants[variant].file,
        settings.intra_op_threads(),
        providers,
        settings.cache,
        settings.cuda_device,
        settings.cpu_mem_arena,
        fp16=manifest.variants[variant].precision == "fp16",
        trt_profile=trt_profile(
            [(i.name, i.shape) for i in manifest.signature.inputs],
            settings.batch_limit(manifest.modality, "gpu"),
            manifest.preprocessing.get("max_length"),
        ),
    )


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, LoadedModel] = {}
        self.broken: dict[str, str] = {}  # model folder → why it was refused
        self.stale: dict[str, str] = {}  # model folder → why its new version was refused (the old one serves)
        self.lock = threading.Lock()  # one reload at a time
        directories = self._scan(self.broken)
        for model in self._load_all(directories, self.broken):
            if model is not None:
                self.models[model.name] = model

    def _scan(self, broken: dict[str, str]) -> list[Path]:
        """The model folders to serve: every folder with a manifest (or those TUNESERVE_MODELS names)."""
        root = Path(self.settings.repository)
        wanted = set(self.settings.models)
        found = {p.parent.name for p in root.glob(f"*/{MANIFEST_FILE}")}
        for name in sorted(wanted - found):
            broken[name] = f"asked for in TUNESERVE_MODELS but not in {root}"
            log.error("not serving %s: not in %s", name, root)
        return [
            p.parent for p in sorted(root.glob(f"*/{MANIFEST_FILE}")) if not wanted or p.parent.name in wanted
        ]

    def _load_all(self, directories: list[Path], broken: dict[str, str]) -> list[LoadedModel | None]:
        """Load folders side by side, one per core (hashing and session creation are native code that
        releases the GIL); refusals go into `broken`. Where a GPU provider might work, the first
        folder loads alone, so its probe decides for the others."""
        if not directories:
            return []
        first: list[LoadedModel | None] = []
        if len(directories) > 1 and usable_accelerators(candidate_providers(self.settings.device)):
            first, directories = [self._try_load(directories[0], broken)], directories[1:]
        with ThreadPoolExecutor(
            max_workers=max(1, min(len(directories), os.cpu_count() or 1)), thread_name_prefix="load"
        ) as pool:
            return first + list(pool.map(lambda d: self._try_load(d, broken), directories))

    def reload(
        self, prepare: Callable[[LoadedModel], None] | None = None
    ) -> tuple[dict[str, Any], list[LoadedModel]]:
        """Re-read the repository and swap in what changed, without stopping anything that runs.

        A folder whose manifest changed is loaded (and verified) beside the model that serves now and
        replaces it only once it loaded; if the new version is refused, the old one keeps serving
        (listed in `stale`, not in `broken`: the pod still serves it). A folder that disappeared stops
        serving; a new folder starts. `prepare` runs on each new model before it is published (the
        server attaches its batcher there). `self.models` is replaced in one assignment, so a request
        sees either the old or the new set, and a request that already holds a model finishes on it.
        Returns what changed and the models that no longer serve (for the caller to release)."""
        with self.lock:
            current = {m.directory: m for m in self.models.values()}
            broken: dict[str, str] = {}
            directories = self._scan(broken)
            if not directories and current:
                raise RequestError(
                    f"{self.settings.repository} holds no model now; refusing to unload every model",
                    status=409,
                )
            changed = []
            for directory in directories:
                model = current.get(directory)
                try:
                    stamp = hashlib.sha256((directory / MANIFEST_FILE).read_bytes()).hexdigest()
                except OSError:
                    stamp = None
                if model is None or model.stamp != stamp:
                    changed.append(directory)
            models = {m.name: m for d, m in current.items() if d in directories}
            stale: dict[str, str] = {}
            report: dict[str, Any] = {
                "loaded": [],
                "kept": [],
                "removed": sorted(m.name for d, m in current.items() if d not in directories),
                "refused": {},
            }
            for directory, model in zip(changed, self._load_all(changed, broken)):
                if model is None:
                    report["refused"][directory.name] = broken[directory.name]
                    if directory in current:  # the version that serves now keeps serving
                        report["kept"].append(current[directory].name)
                        stale[directory.name] = broken.pop(directory.name)
                    continue
                if prepare is not None:
                    prepare(model)
                old = current.get(directory)
                if old is not None and old.name != model.name:
                    models.pop(old.name, None)
                models[model.name] = model
                report["loaded"].append(f"{model.name} v{model.manifest.version}")
            retired = [m for m in current.values() if models.get(m.name) is not m]
            self.models, self.broken, self.stale = models, broken, stale
            return report, retired

    def _try_load(self, directory: Path, broken: dict[str, str]) -> LoadedModel | None:
        try:
            model = load_model(directory, self.settings)
        except (
            Exception
        ) as exc:  # a bad model folder (manifest, hashes, an ONNX file ORT rejects) is refused alone
            reason = str(exc) if isinstance(exc, ManifestError) else f"{type(exc).__name__}: {exc}"
            broken[directory.name] = reason
            log.error("not serving %s: %s", directory.name, reason)
            return None
        log.info(
            "loaded %s v%s (%s, %s on %s)%s",
            model.name,
            model.manifest.version,
            model.manifest.task,
            model.variant,
            model.session_info.provider,
            "".join(f"; {why}" for why in model.session_info.fallbacks),
        )
        return model

    def resolve(self, name: str | None, task: str) -> LoadedModel:
        """The model a request asked for, or the task's default; 4xx errors name what is wrong."""
        if name is None:
            same_task = sorted(m for m, model in self.models.items() if serves(model.manifest.task, task))
            if not same_task:
                raise UnknownModel(
                    f"no {task} model is loaded; available models: {sorted(self.models) or 'none'}"
                )
            default = TASKS[task].default_model
            return self.models[default if default in same_task else same_task[0]]
        model = self.models.get(name)
        if model is None:
            broken = self.broken  # read once: a reload replaces the dict
            hint = f" (refused at load: {broken[name]})" if name in broken else ""
            shown = repr(name) if len(name) <= 100 else f"{name[:100]!r}… ({len(name)} characters)"
            raise UnknownModel(
                f"unknown model {shown}{hint}; available models: {sorted(self.models) or 'none'}"
            )
        if not serves(model.manifest.task, task):
            own = TASKS.get(model.manifest.task)
            route = f"/v1{own.route}" if own is not None else f"/v2/models/{name}/infer"
            raise RequestError(f"model {name!r} is a {model.manifest.task} model; send it to {route}")
        return model
