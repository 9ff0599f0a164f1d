"""One predictor per task: turns a list of inputs into a list of answers with one ONNX Runtime call.

A predictor is what the batcher calls; it never sees HTTP. `tuneserve predict` calls it directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import onnxruntime as ort

from serving.manifest import Manifest
from serving.processing import TextPreprocessor, softmax, top_label


class Predictor(Protocol):
    task: str

    def __call__(self, inputs: list[Any]) -> list[dict]: ...


class TextClassifier:
    """Sequence classification: texts → label, score and every class's probability."""

    task = "text-classification"

    def __init__(self, model_dir: Path, manifest: Manifest, session: ort.InferenceSession, bucket_size: int = 16) -> None:
        self.manifest = manifest
        self.session = session
        self.preprocessor = TextPreprocessor.from_config(model_dir, manifest.preprocessing)
        self.input_names = [i.name for i in session.get_inputs()]
        self.bucket_size = bucket_size

    def __call__(self, texts: list[str]) -> list[dict]:
        answers: list[dict] = [{}] * len(texts)
        for positions, batch in self.preprocessor.encode_bucketed(texts, self.bucket_size):
            feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            (logits,) = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})
            for pos, answer, truncated in zip(positions, top_label(softmax(logits), self.manifest.labels), batch.truncated):
                answer["truncated"] = truncated
                answers[pos] = answer
        return answers


PREDICTORS: dict[str, Callable[[Path, Manifest, ort.InferenceSession], Predictor]] = {
    TextClassifier.task: TextClassifier,
}


def make_predictor(model_dir: Path, manifest: Manifest, session: ort.InferenceSession) -> Predictor:
    try:
        factory = PREDICTORS[manifest.task]
    except KeyError:
        raise ValueError(f"model {manifest.name!r}: no predictor for task {manifest.task!r}") from None
    return factory(model_dir, manifest, session)


def warm_up(predictor: Predictor, sample: list[Any]) -> None:
    """One call so the first real request does not pay for lazy allocations."""
    predictor(sample)
