"""Request bodies for every endpoint of the HTTP contract: the task's own samples (serving/tasks/), or
the user's own (`--payload-file`: JSONL of whole JSON bodies, or a folder of files for multipart
endpoints). Payloads rotate, so no cache can flatter the numbers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from serving.tasks import TASKS, FileTask, Sample, ServingTask, task_for_route


@dataclass(frozen=True)
class Payload:
    """One request body: JSON bytes, or multipart files under one field (plus plain fields)."""

    json_body: bytes | None = None
    files: tuple[tuple[str, bytes, str], ...] = ()  # (filename, content, content type)
    file_field: str = ""
    fields: tuple[tuple[str, str], ...] = field(default=())
    body: bytes | None = None  # any other body (v2 binary tensors), sent with `headers`
    headers: tuple[tuple[str, str], ...] = ()

    def request_kwargs(self) -> dict[str, Any]:
        if self.body is not None:
            return {"data": self.body, "headers": dict(self.headers)}
        if self.json_body is not None:
            return {"data": self.json_body, "headers": {"content-type": "application/json"}}
        form = aiohttp.FormData()  # single-use in aiohttp: built per request
        for name, value in self.fields:
            form.add_field(name, value)
        for filename, content, content_type in self.files:
            form.add_field(self.file_field, content, filename=filename, content_type=content_type)
        return {"data": form}


def json_payload(body: dict[str, Any]) -> Payload:
    return Payload(json_body=json.dumps(body).encode())


def from_sample(sample: Sample, file_field: str) -> Payload:
    if sample.json is not None:
        return json_payload(sample.json)
    return Payload(files=sample.files, file_field=file_field, fields=sample.fields)


@dataclass(frozen=True)
class Endpoint:
    route: str  # full path, /v1/...
    task: type[ServingTask]

    @property
    def file_field(self) -> str:
        return self.task.file_field or ""

    @property
    def default_model(self) -> str:
        return self.task.default_model


# Every route of the task registry, by its path under /v1 without the leading slash.
ENDPOINTS = {task.route.lstrip("/"): Endpoint(f"/v1{task.route}", task) for task in TASKS.values()}


def get_endpoint(name: str) -> Endpoint:
    """An endpoint named by its route under /v1, with or without the prefix."""
    task = task_for_route(name)
    return Endpoint(f"/v1{task.route}", task)


def builtin_payloads(endpoint: str, model: str | None) -> list[Payload]:
    """The task's own sample requests (distinct, so no cache can flatter the numbers)."""
    ep = get_endpoint(endpoint)
    return [from_sample(s, ep.file_field) for s in ep.task.samples(ep.task.load_samples, model)]


def v2_payloads(endpoint: str, model: str | None) -> tuple[str, list[Payload]]:
    """The task's samples as Open Inference Protocol requests with binary tensors, and the route
    (`/v2/models/<model>/infer`, the task's default model unless `model` names one)."""
    from serving.protocols.v2 import binary_infer_body, sample_tensors

    task = get_endpoint(endpoint).task
    payloads = []
    for sample in task.samples(task.load_samples):
        body, header = binary_infer_body(*sample_tensors(task, sample))
        payloads.append(
            Payload(
                body=body,
                headers=(
                    ("content-type", "application/octet-stream"),
                    ("inference-header-content-length", str(header)),
                ),
            )
        )
    return f"/v2/models/{model or task.default_model}/infer", payloads


def payloads_from_file(endpoint: str, path: Path, model: str | None = None) -> list[Payload]:
    """JSONL (one whole JSON body per line) for JSON endpoints; a folder of files for multipart ones."""
    ep = get_endpoint(endpoint)
    if ep.file_field:
        if not path.is_dir():
            raise ValueError(f"{endpoint} takes files: --payload-file must be a folder, got {path}")
        types = ep.task.content_types if issubclass(ep.task, FileTask) else {}
        files = [
            (p.name, p.read_bytes(), types.get(p.suffix.lower(), "application/octet-stream"))
            for p in sorted(path.iterdir())
            if p.is_file()
        ]
        if not files:
            raise ValueError(f"{path}: no files")
        fields = (("model", model),) if model else ()
        return [Payload(files=(f,), file_field=ep.file_field, fields=fields) for f in files]
    payloads = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                body = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
            if model and isinstance(body, dict) and "model" not in body:
                body = {"model": model, **body}
            payloads.append(json_payload(body))
    if not payloads:
        raise ValueError(f"{path}: no payloads")
    return payloads
