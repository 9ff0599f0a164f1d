"""The registry of serving tasks: one module per task, one line here. Routes, the OpenAPI document,
`tuneserve predict`, load-test payloads and the hostile-input corpus are all derived from `TASKS`."""

from __future__ import annotations

from serving.tasks.audio import AudioClassification
from serving.tasks.base import FileRequest, FileTask, Sample, ServingTask, Upload
from serving.tasks.detection import ObjectDetection
from serving.tasks.forecasting import Forecasting
from serving.tasks.image import ImageClassification
from serving.tasks.ocr import TextRecognition
from serving.tasks.search import SemanticSearch, TextEmbedding
from serving.tasks.segmentation import ImageSegmentation
from serving.tasks.tabular import TabularClassification
from serving.tasks.tensor import TensorTask
from serving.tasks.text import TextClassification, TokenClassification

TASKS: dict[str, type[ServingTask]] = {
    task.name: task
    for task in (
        TextClassification,
        TokenClassification,
        ImageClassification,
        AudioClassification,
        TabularClassification,
        Forecasting,
        TextEmbedding,
        SemanticSearch,
        TextRecognition,
        ImageSegmentation,
        ObjectDetection,
    )
}


# Served on the Open Inference Protocol only, with no v1 route: raw tensors (imported models).
PROTOCOL_ONLY: dict[str, type[ServingTask]] = {TensorTask.name: TensorTask}


def get_task(name: str) -> type[ServingTask]:
    try:
        return TASKS.get(name) or PROTOCOL_ONLY[name]
    except KeyError:
        known = ", ".join(sorted([*TASKS, *PROTOCOL_ONLY]))
        raise ValueError(f"no serving task {name!r}; known: {known}") from None


def serves(model_task: str, task: str) -> bool:
    """Whether a model of `model_task` answers on `task`'s route: its own, and those of the tasks its
    serving class extends (a semantic-search model is an embedding model with an index)."""
    model_class = TASKS.get(model_task)
    return model_class is not None and issubclass(model_class, TASKS[task])


def task_for_route(route: str) -> type[ServingTask]:
    """The task of a route, given with or without its leading `/` or `/v1/`."""
    key = "/" + route.strip("/").removeprefix("v1/")
    for task in TASKS.values():
        if task.route == key:
            return task
    raise ValueError(
        f"unknown endpoint {route!r}; known: {', '.join(t.route.lstrip('/') for t in TASKS.values())}"
    )


__all__ = [
    "PROTOCOL_ONLY",
    "TASKS",
    "FileRequest",
    "FileTask",
    "Sample",
    "ServingTask",
    "Upload",
    "get_task",
    "serves",
    "task_for_route",
]
