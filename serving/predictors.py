"""One predictor per task: turns a list of inputs into a list of answers with one ONNX Runtime call.

A predictor is what the batcher calls; it never sees HTTP. `tuneserve predict` calls it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import onnxruntime as ort

from serving.manifest import Manifest
import numpy as np

from serving.processing import ImagePreprocessor, TextPreprocessor, decode_image, softmax, top_k, top_label
from serving.processing.audio import LogMelFrontEnd, decode_audio
from serving.processing.series import clean_history, standardise
from serving.processing.spans import decode_spans, words_from_encoding
from serving.processing.tabular import RowEncoder
from serving.processing.vad import SileroVAD


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


@dataclass
class AudioWindow:
    features: np.ndarray  # (1, mels, frames) log-mel
    start_s: float
    end_s: float


@dataclass
class AudioClip:
    duration_s: float
    windows: list[AudioWindow]  # empty: no speech found


class AudioClassifier:
    """Audio classification: a clip up to one window long is classified as is; a longer clip goes
    through voice-activity detection and each speech segment is classified (in one-window pieces);
    the answer names the best keyword and where it was, or `_silence_` when there is no speech."""

    task = "audio-classification"
    SILENCE, UNKNOWN = "_silence_", "_unknown_"

    def __init__(self, model_dir: Path, manifest: Manifest, session: ort.InferenceSession) -> None:
        self.manifest = manifest
        self.session = session
        self.front_end = LogMelFrontEnd.from_config(manifest.preprocessing)
        self.input_name = session.get_inputs()[0].name
        vad_file = manifest.preprocessing.get("vad")
        self.vad = SileroVAD(model_dir / vad_file) if vad_file else None

    def prepare(self, data: bytes) -> AudioClip:
        samples = decode_audio(data, target_rate=self.front_end.sample_rate)
        duration = len(samples) / self.front_end.sample_rate
        window = self.front_end.window_seconds
        if duration <= window * 1.05 or self.vad is None:
            return AudioClip(duration, [AudioWindow(self.front_end(samples), 0.0, round(duration, 3))])
        windows = []
        rate = self.front_end.sample_rate
        for start, end in self.vad.segments(samples):
            # segments longer than a window are covered by windows overlapping by half
            offsets = np.arange(start, max(start, end - window) + 1e-9, window / 2) if end - start > window else [max(0.0, (start + end - window) / 2)]
            for offset in offsets:
                piece = samples[int(offset * rate) : int((offset + window) * rate)]
                windows.append(AudioWindow(self.front_end(piece), round(max(start, offset), 3), round(min(end, offset + window), 3)))
        return AudioClip(duration, windows)

    def __call__(self, features: list[np.ndarray]) -> list[np.ndarray]:
        (logits,) = self.session.run(None, {self.input_name: np.stack(features)})
        return list(softmax(logits))

    def combine(self, clip: AudioClip, probs: list[np.ndarray]) -> dict:
        labels = self.manifest.labels
        if not clip.windows:
            scores = {label: float(label == self.SILENCE) for label in labels}
            return {"label": self.SILENCE, "score": 1.0, "start_s": 0.0, "end_s": round(clip.duration_s, 3), "scores": scores, "speech": False}
        keywords = [i for i, label in enumerate(labels) if label not in (self.SILENCE, self.UNKNOWN)]

        def strength(row: np.ndarray) -> float:  # a window counts by its best keyword when a keyword wins it
            best = int(row.argmax())
            return float(row[best]) + (1.0 if best in keywords else 0.0)

        best = 0 if len(probs) == 1 else max(range(len(probs)), key=lambda i: strength(probs[i]))
        row, window = probs[best], clip.windows[best]
        top = int(row.argmax())
        return {"label": labels[top], "score": float(row[top]), "start_s": window.start_s, "end_s": window.end_s,
                "scores": dict(zip(labels, row.tolist())), "speech": True}


class TabularClassifier:
    """Table rows: `prepare` validates and encodes one request's rows (errors name row and column);
    `__call__` runs the blocks of several requests as one batch and answers per row. Binary models
    decide with the threshold chosen on validation at build time; probabilities are calibrated."""

    task = "tabular-classification"

    def __init__(self, model_dir: Path, manifest: Manifest, session: ort.InferenceSession) -> None:
        self.manifest = manifest
        self.session = session
        self.encoder = RowEncoder.from_config(manifest.preprocessing)
        self.labels = manifest.labels
        self.positive = manifest.preprocessing.get("positive_index")
        self.threshold = float(manifest.preprocessing.get("threshold", 0.5))

    def prepare(self, rows: list) -> dict[str, np.ndarray]:
        return self.encoder.encode(rows)

    def __call__(self, blocks: list[dict[str, np.ndarray]]) -> list[list[dict]]:
        feeds = {name: np.concatenate([b[name] for b in blocks]) for name in self.encoder.input_names}
        (logits,) = self.session.run(None, feeds)
        probs = softmax(logits)
        if self.positive is not None:
            other = 1 - self.positive
            chosen = np.where(probs[:, self.positive] >= self.threshold, self.positive, other)
        else:
            chosen = probs.argmax(axis=1)
        answers = [
            {"label": self.labels[c], "score": float(row[c]), "scores": dict(zip(self.labels, row.tolist()))}
            for c, row in zip(chosen.tolist(), probs)
        ]
        out, start = [], 0
        for b in blocks:
            n = len(b["numeric"])
            out.append(answers[start : start + n])
            start += n
        return out


@dataclass
class SeriesInput:
    window: np.ndarray  # (window,) float32, standardised
    loc: float
    scale: float
    horizon: int
    interpolated: int


class Forecaster:
    """Quantile forecasts: `prepare` validates the history (gaps, types, length) and standardises its
    last window; `__call__` runs windows of several requests together; `finish` maps the quantiles
    back to the series' units and cuts them to the requested horizon."""

    task = "forecasting"

    def __init__(self, model_dir: Path, manifest: Manifest, session: ort.InferenceSession) -> None:
        self.manifest = manifest
        self.session = session
        p = manifest.preprocessing
        self.window, self.max_horizon, self.max_gap = int(p["window"]), int(p["horizon"]), int(p.get("max_gap", 3))
        self.quantile_names = list(manifest.labels)
        self.input_name = session.get_inputs()[0].name

    def prepare(self, history: list, horizon: int | None) -> SeriesInput:
        horizon = self.max_horizon if horizon is None else horizon
        if not 1 <= horizon <= self.max_horizon:
            raise ValueError(f"horizon: {horizon} is out of range; the model forecasts 1..{self.max_horizon} steps")
        values, interpolated = clean_history(history, self.window, self.max_gap)
        window, loc, scale = standardise(values)
        return SeriesInput(window, float(loc[0]), float(scale[0]), horizon, interpolated)

    def __call__(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        (out,) = self.session.run(None, {self.input_name: np.stack(windows)})
        return list(out)

    def finish(self, prepared: SeriesInput, output: np.ndarray) -> dict:
        values = output[: prepared.horizon].astype(np.float64) * prepared.scale + prepared.loc
        quantiles = {name: values[:, i].tolist() for i, name in enumerate(self.quantile_names)}
        median = quantiles.get("p50", values[:, len(self.quantile_names) // 2].tolist())
        return {"horizon": prepared.horizon, "forecast": median, "quantiles": quantiles, "interpolated": prepared.interpolated}


PREDICTORS: dict[str, Callable[[Path, Manifest, ort.InferenceSession], Predictor]] = {
    TextClassifier.task: TextClassifier,
    ImageClassifier.task: ImageClassifier,
    TokenClassifier.task: TokenClassifier,
    AudioClassifier.task: AudioClassifier,
    TabularClassifier.task: TabularClassifier,
    Forecaster.task: Forecaster,
}


def make_predictor(model_dir: Path, manifest: Manifest, session: ort.InferenceSession) -> Predictor:
    try:
        factory = PREDICTORS[manifest.task]
    except KeyError:
        raise ValueError(f"model {manifest.name!r}: no predictor for task {manifest.task!r}") from None
    return factory(model_dir, manifest, session)
