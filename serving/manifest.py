"""The model repository's manifest: one schema, written by training, read and verified by serving."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from serving.errors import ManifestError

MANIFEST_FILE = "manifest.json"
# In the repository while `tuneserve serve --build-missing` builds models in the background: what is
# being built and what is pending (`tuneserve build --status-file`); the server reloads as models land.
BUILD_STATUS_FILE = ".building.json"
SCHEMA_VERSION = 1
Device = Literal["cpu", "gpu"]


class FileEntry(BaseModel):
    bytes: int
    sha256: str


class TensorSpec(BaseModel):
    name: str
    dtype: str
    shape: list[str | int]


class Signature(BaseModel):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Variant(BaseModel):
    """One servable ONNX file of the model (fp32, int8, ...), with its measured quality."""

    file: str
    precision: Literal["fp32", "fp16", "int8"]
    metrics: dict[str, float] = Field(default_factory=dict)
    parity: dict[str, float | bool] = Field(default_factory=dict)
    speed: dict[str, float] = Field(default_factory=dict)  # measured at build time on the build machine's CPU
    note: str = ""


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    task: str
    modality: str
    base_model: str
    recipe: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    signature: Signature
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, Variant]
    default_variant: dict[Device, str]
    default_reason: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, FileEntry] = Field(default_factory=dict)
    build: dict[str, Any] = Field(default_factory=dict)
    # imported models: where the files came from (kind, file or package, version, url, sha256, licence)
    source: dict[str, Any] = Field(default_factory=dict)

    def variant_for(self, device: Device, override: str | None = None) -> str:
        name = override or self.default_variant.get(device) or self.default_variant["cpu"]
        if name not in self.variants:
            raise ManifestError(f"model {self.name!r} has no variant {name!r} (has {sorted(self.variants)})")
        return name

    def public(self, variant: str | None = None) -> dict[str, Any]:
        """What `GET /v1/models` shows: no file hashes, no build internals."""
        return {
            "name": self.name,
            "task": self.task,
            "modality": self.modality,
            "version": self.version,
            "base_model": self.base_model,
            "labels": self.labels,
            "variant": variant or self.default_variant["cpu"],
            "variants": {
                k: {"precision": v.precision, "metrics": v.metrics} for k, v in self.variants.items()
            },
            "metrics": {k: v for k, v in self.metrics.items() if not isinstance(v, (list, dict))},
        }


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_files(model_dir: Path) -> dict[str, FileEntry]:
    """Size and sha256 of every file in a model folder except the manifest itself."""
    entries = {}
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        entries[path.relative_to(model_dir).as_posix()] = FileEntry(
            bytes=path.stat().st_size, sha256=sha256_file(path)
        )
    return entries


def write_manifest(model_dir: Path, manifest: Manifest) -> Path:
    manifest.files = describe_files(model_dir)
    path = model_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path


def load_manifest(model_dir: Path, verify: bool = True, raw: bytes | None = None) -> Manifest:
    """Read `<model_dir>/manifest.json` (or parse `raw`, its bytes already read); with `verify`,
    refuse the model if any file's sha256 differs."""
    path = Path(model_dir) / MANIFEST_FILE
    try:
        manifest = Manifest.model_validate_json(raw if raw is not None else path.read_bytes())
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no manifest") from exc
    except (ValidationError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: invalid manifest: {exc}") from exc
    if verify:
        verify_files(Path(model_dir), manifest)
    return manifest


def asset_files(manifest: Manifest) -> set[str]:
    """Files pre-processing reads (tokenizer, VAD model, ...): those named in `preprocessing`."""
    return {v for v in manifest.preprocessing.values() if isinstance(v, str) and v in manifest.files}


def serving_files(manifest: Manifest) -> set[str]:
    """Files the server may read: every ONNX variant and the assets."""
    return {v.file for v in manifest.variants.values()} | asset_files(manifest)


def verify_files(model_dir: Path, manifest: Manifest, only: set[str] | None = None) -> None:
    """Every listed file that is present must match its size and sha256; the files serving reads must
    be present. Others (e.g. model.ts, which an edge image leaves out) may be absent. With `only`,
    just those files are checked (the server hashes what it opens, not every variant: faster start)."""
    needed = serving_files(manifest) if only is None else set(only)
    unlisted = needed - set(manifest.files)
    if unlisted:
        raise ManifestError(f"{model_dir}: {sorted(unlisted)} not listed in the manifest's files")
    for rel, entry in manifest.files.items():
        if only is not None and rel not in needed:
            continue
        path = model_dir / rel
        if not path.is_file():
            if rel in needed:
                raise ManifestError(f"{model_dir}: {rel} is listed in the manifest but missing")
            continue
        if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
            raise ManifestError(
                f"{model_dir}: {rel} does not match its sha256 in the manifest; refusing to load"
            )
