"""Task registry: one module per task, each a `Task` subclass. The loop, export and quantise are generic."""

from __future__ import annotations

from training.tasks.audio_classification import AudioClassificationTask
from training.tasks.base import Splits, Task
from training.tasks.detection import DetectionTask
from training.tasks.forecasting import ForecastingTask
from training.tasks.image_classification import ImageClassificationTask
from training.tasks.segmentation import SegmentationTask
from training.tasks.semantic_search import SemanticSearchTask, TextEmbeddingTask
from training.tasks.tabular_classification import TabularClassificationTask
from training.tasks.text_classification import TextClassificationTask
from training.tasks.token_classification import TokenClassificationTask

TASKS: dict[str, type[Task]] = {
    TextClassificationTask.name: TextClassificationTask,
    ImageClassificationTask.name: ImageClassificationTask,
    TokenClassificationTask.name: TokenClassificationTask,
    AudioClassificationTask.name: AudioClassificationTask,
    TabularClassificationTask.name: TabularClassificationTask,
    ForecastingTask.name: ForecastingTask,
    TextEmbeddingTask.name: TextEmbeddingTask,
    SemanticSearchTask.name: SemanticSearchTask,
    SegmentationTask.name: SegmentationTask,
    DetectionTask.name: DetectionTask,
}


def get_task(name: str) -> type[Task]:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None


__all__ = ["TASKS", "Splits", "Task", "get_task"]
