"""What a serving task declares, and the four stages every request goes through.

A task module defines one `ServingTask` subclass. The class says what the task is (its name in the
manifest, its route, its request and response models, its CLI options, sample requests); an instance
is made per loaded model and holds that model's session and pre-processing. Every request, from HTTP,
the v2 protocol or `tuneserve predict`, runs the same stages:

    decode   request body → `request_model` (pydantic) or, for file tasks, a `FileRequest`
    check    limits that depend on the model or the settings (cheap, on the event loop)
    prepare  CPU work: decode files, tokenise, encode rows (off the event loop when heavy)
    run      one ONNX Runtime call for a batch of items, merged across requests by the batcher
    answer   this request's outputs → the response body

Task modules import OpenCV, the tokenizers, soundfile and ONNX Runtime only inside the instance
(`__init__`): the service's parent process imports the registry to mount the routes and must not
load the model stack. The HTTP layer (serving/app.py), the OpenAPI document, `tuneserve predict`, the load tester's
payloads and the hostile-input corpus read these declarations; none of them names a task.
"""

from __future__ import annotations

import functools
import inspect
import operator
import types
from abc import ABC, abstractmethod
from copy import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from serving.errors import InputError, RequestError
from serving.manifest import Manifest
from serving.settings import Settings

Prepared = TypeVar("Prepared")
Item = TypeVar("Item")
Output = TypeVar("Output")


class TaskRequest(BaseModel):
    """Every request may name `model`; without it the task's default model answers."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None


class Answer(BaseModel):
    """What every answer carries besides its results."""

    model: str
    version: str
    variant: str


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its form field's position, filename and bytes (a view into the body)."""

    index: int
    filename: str | None
    data: memoryview | bytes

    def label(self, field_name: str) -> str:
        name = f"{field_name}[{self.index}]"
        return f"{name} ({self.filename!r})" if self.filename else name


@dataclass
class FileRequest:
    """A multipart request of a file task: `model`, the uploads, and the task's own text fields."""

    model: str | None
    files: list[Upload]
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    """A request option of a file task (a multipart text field) and of `tuneserve predict`."""

    type: type
    help: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class Sample:
    """One request for the load tester, the hostile corpus and the docs: a JSON body, or files
    (filename, bytes, content type) with text fields."""

    json: dict[str, Any] | None = None
    files: tuple[tuple[str, bytes, str], ...] = ()
    fields: tuple[tuple[str, str], ...] = ()


class ServingTask(ABC, Generic[Prepared, Item, Output]):
    name: ClassVar[str]  # the manifest's `task`
    route: ClassVar[str]  # path under /v1
    client_method: ClassVar[str]  # its method in serving/client.py and its BentoML API (e.g. classify_text)
    summary: ClassVar[str]
    default_model: ClassVar[str]  # answers requests that name no model, when loaded
    response_model: ClassVar[type[Answer]]
    request_model: ClassVar[type[TaskRequest] | None] = None  # JSON tasks
    file_field: ClassVar[str | None] = None  # file tasks: the multipart field holding the files
    options: ClassVar[dict[str, Option]] = {}  # file tasks' text fields; CLI flags of every task
    load_samples: ClassVar[int] = 200  # distinct requests the load tester rotates through
    # Whether `answer` is heavy CPU work (masks, contours, PNG encoding) that the server runs in its
    # prepare pool: off the event loop, and off the inference thread, so that it overlaps the next
    # batch's ONNX Runtime call instead of delaying it.
    answer_in_pool: ClassVar[bool] = False

    def __init__(self, model_dir: Path, manifest: Manifest, session: Any, settings: Settings) -> None:
        self.manifest = manifest
        self.session = session
        self.settings = settings

    # --- per request ---------------------------------------------------------------------------

    def check(self, request: Any) -> None:
        """Refuse what this model or the settings cannot take (counts, lengths); RequestError."""

    @abstractmethod
    def prepare(self, request: Any) -> Prepared:
        """CPU work before inference; InputError names what is wrong with the input."""

    @abstractmethod
    def items(self, prepared: Prepared) -> list[Item]:
        """What goes into the batcher for this request (may be empty)."""

    @abstractmethod
    def run(self, items: list[Item]) -> list[Output]:
        """One ONNX Runtime call for a batch of items from any number of requests, one output each."""

    @abstractmethod
    def answer(self, request: Any, prepared: Prepared, outputs: list[Output]) -> dict[str, Any]:
        """The response body's results for this request (the model, version and variant are added)."""

    def predict(self, request: Any) -> dict[str, Any]:
        """Every stage in this thread, without a batcher: what `tuneserve predict` and tests call.
        Input errors are raised as RequestError, as over HTTP."""
        self.check(request)
        try:
            prepared = self.prepare(request)
        except InputError as exc:
            raise RequestError(str(exc)) from None
        items = self.items(prepared)
        return self.answer(request, prepared, self.run(items) if items else [])

    def item_fields(self) -> dict[str, dict[str, str]]:
        """For request fields that are lists of objects (table rows): each object's keys and their
        JSON types ("number", "string", "boolean") for this model. Protocols that take columns
        (the v2 protocol's typed per-feature tensors) build the objects from them."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What `GET /v1/models` shows of this model besides its manifest's public part (e.g. the
        frequencies a forecaster serves and the history each needs)."""
        return {}

    def heavy(self, request: Any) -> bool:
        """Whether `prepare` should run off the event loop (file tasks always prepare there)."""
        return False

    # --- declarations read by tools ----------------------------------------------------------------

    @classmethod
    def arguments(cls, files: Any) -> dict[str, tuple[Any, Any]]:
        """The request as typed arguments, inputs first and `model` last, for the methods generated
        from the registry (BentoML's APIs in serving/protocols/native.py, serving/client.py): a JSON
        task's request-model fields; a file task's files (typed `files`: each caller's file type),
        its options and `model`. Each is (annotation, pydantic FieldInfo)."""
        model = (
            str | None,
            Field(
                None, description=f"the model to answer; default: the task's default ({cls.default_model})"
            ),
        )
        if cls.request_model is not None:
            fields = cls.request_model.model_fields
            inputs = {name: (f.annotation, copy(f)) for name, f in fields.items() if name != "model"}
            return {**inputs, "model": model}
        assert cls.file_field is not None
        return {
            cls.file_field: (files, Field(min_length=1, description="one or more files")),
            **{
                name: (option.type | None, Field(None, description=option.help))
                for name, option in cls.options.items()
            },
            "model": model,
        }

    @classmethod
    def method_signature(cls, files: Any, returns: Any) -> inspect.Signature:
        """`(self, /, first input, *, other inputs..., model=None) -> returns` from `arguments(files)`:
        the signature of the task's generated methods."""
        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]
        for i, (name, (annotation, info)) in enumerate(cls.arguments(files).items()):
            kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if i == 0 else inspect.Parameter.KEYWORD_ONLY
            default = inspect.Parameter.empty if info.is_required() else info.default
            params.append(inspect.Parameter(name, kind, default=default, annotation=shown(annotation)))
        return inspect.Signature(params, return_annotation=returns)

    @classmethod
    @abstractmethod
    def samples(cls, count: int, model: str | None = None) -> list[Sample]:
        """Distinct valid requests for the default model (load tests, examples, the hostile corpus)."""

    @classmethod
    @abstractmethod
    def cli_request(cls, inputs: list[str], options: dict[str, Any], model: str) -> Any:
        """The request `tuneserve predict MODEL INPUTS...` makes (files are read from disk)."""

    @staticmethod
    def cli_line(given: str, prediction: Any) -> str:
        """One line per prediction for `tuneserve predict` without --json."""
        return f"{prediction['label']:<24} {prediction['score']:.3f}  {given}"

    @classmethod
    def cli_rows(cls, inputs: list[str], answer: dict[str, Any]) -> list[tuple[str, Any]] | None:
        """(input, prediction) pairs to print one per line, or None to print the JSON answer."""
        return list(zip(inputs, answer["predictions"]))


def shown(annotation: Any) -> Any:
    """A type as a reader wants it in a signature: pydantic's constraints (`Annotated[str, Strict()]`)
    taken off, at any depth."""
    if get_origin(annotation) is Annotated:
        return shown(get_args(annotation)[0])
    args = get_args(annotation)
    if not args:
        return annotation
    inner = tuple(shown(a) for a in args)
    if get_origin(annotation) in (Union, types.UnionType):
        return functools.reduce(operator.or_, inner)
    try:
        return get_origin(annotation)[inner]
    except TypeError:  # a form that cannot be rebuilt from its parts: as it is
        return annotation


class FileTask(ServingTask[list[Prepared], Item, Output]):
    """A task whose inputs are uploaded files, each prepared on its own (in parallel over HTTP)."""

    file_field: ClassVar[str]
    content_types: ClassVar[dict[str, str]] = {}  # file suffix → content type, for --payload-file

    @abstractmethod
    def prepare_file(self, data: bytes) -> Prepared:
        """Decode and pre-process one upload; InputError says what is wrong with it."""

    def prepare_upload(self, upload: Upload) -> Prepared:
        """`prepare_file` with the size limit, and errors that name the file."""
        name = upload.label(self.file_field)
        if len(upload.data) > self.settings.max_file_bytes:
            raise RequestError(
                f"{name}: {len(upload.data) / 2**20:.1f} MiB; the limit is {self.settings.max_file_mb:g} MiB per file",
                status=413,
            )
        try:
            return self.prepare_file(bytes(upload.data))
        except InputError as exc:
            raise RequestError(f"{name}: {exc}") from None

    def prepare(self, request: FileRequest) -> list[Prepared]:
        return [self.prepare_upload(u) for u in request.files]

    @classmethod
    def cli_request(cls, inputs: list[str], options: dict[str, Any], model: str) -> FileRequest:
        fields = {name: str(options[name]) for name in cls.options if options.get(name) is not None}
        return FileRequest(
            model, [Upload(i, Path(p).name, Path(p).read_bytes()) for i, p in enumerate(inputs)], fields
        )
