"""One predictor per task: turns a list of inputs into a list of answers with one ONNX Runtime call.

A predictor is what the batcher calls; it never sees HTTP. `tuneserve predict` calls it directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import onnxruntime as ort

from serving.manifest import Manifest
import numpy as np

from serving.processing import ImagePreprocessor, TextPreprocessor, decode_image, softmax, top_k, top_label
from serving.processing.spans import decode_spans, words_from_encoding


class Predictor(Protocol):
    task: str

    def __call__(self, inputs: list[Any]) -> list[dict]: ...


class _TextModel:
    """Shared by the text tasks: tokenise, run length-bucketed sub-batches, hand each row's
    probabilities to `answer`, and put the answers back in input order."""

    task = ""

    def __init__(self, model_dir: Path, manifest: Manifest, session: ort.InferenceSession, bucket_size: int = 16) -> None:
        self.manifest = manifest
        self.session = session
        self.preprocessor = TextPreprocessor.from_config(model_dir, manifest.preprocessing)
        self.input_names = [i.name for i in session.get_inputs()]
        self.bucket_size = bucket_size

    def answer(self, text: str, probs: np.ndarray, encoding, truncated: bool) -> dict:
        raise NotImplementedError

    def __call__(self, texts: list[str]) -> list[dict]:
        answers: list[dict] = [{}] * len(texts)
        for positions, batch in self.preprocessor.encode_bucketed(texts, self.bucket_size):
            feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            (logits,) = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})
            probs = softmax(logits)
            for row, pos in enumerate(positions):
                answers[pos] = self.answer(texts[pos], probs[row], batch.encodings[row], batch.truncated[row])
        return answers


class TextClassifier(_TextModel):
    """Sequence classification: texts → label, score and every class's probability."""

    task = "text-classification"

    def answer(self, text: str, probs: np.ndarray, encoding, truncated: bool) -> dict:
        (answer,) = top_label(probs[None], self.manifest.labels)
        answer["truncated"] = truncated
        return answer


class TokenClassifier(_TextModel):
    """Token classification: texts → entity spans (character offsets into each original text)."""

    task = "token-classification"

    def answer(self, text: str, probs: np.ndarray, encoding, truncated: bool) -> dict:
        words = words_from_encoding(encoding, probs, self.manifest.labels)
        return {"entities": decode_spans(text, words), "truncated": truncated}


class ImageClassifier:
    """Image classification: `prepare` decodes and pre-processes one upload (run in the request's
    thread pool, concurrently with inference); `__call__` runs a batch and ranks the top k."""

    task = "image-classification"

    def __init__(self, model_dir: Path, manifest: Manifest, session: ort.InferenceSession) -> None:
        self.manifest = manifest
        self.session = session
        self.preprocessor = ImagePreprocessor.from_config(manifest.preprocessing)
        self.input_name = session.get_inputs()[0].name

    def prepare(self, data: bytes) -> np.ndarray:
        return self.preprocessor(decode_image(data))

    def __call__(self, items: list[tuple[np.ndarray, int]]) -> list[dict]:
        (logits,) = self.session.run(None, {self.input_name: np.stack([image for image, _ in items])})
        probs = softmax(logits)
        return [top_k(row[None], self.manifest.labels, k)[0] for row, (_, k) in zip(probs, items)]


PREDICTORS: dict[str, Callable[[Path, Manifest, ort.InferenceSession], Predictor]] = {
    TextClassifier.task: TextClassifier,
    ImageClassifier.task: ImageClassifier,
    TokenClassifier.task: TokenClassifier,
}


def make_predictor(model_dir: Path, manifest: Manifest, session: ort.InferenceSession) -> Predictor:
    try:
        factory = PREDICTORS[manifest.task]
    except KeyError:
        raise ValueError(f"model {manifest.name!r}: no predictor for task {manifest.task!r}") from None
    return factory(model_dir, manifest, session)
