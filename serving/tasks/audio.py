"""Keyword spotting (`/audio/classify`): a clip up to one window long is classified as is; a longer
clip goes through voice-activity detection and each speech segment is classified in one-window
pieces. The answer names the best keyword and where it was, or `_silence_` when there is no speech."""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from serving.manifest import Manifest
from serving.processing.postprocess import softmax
from serving.settings import Settings
from serving.tasks.base import Answer, FileRequest, FileTask, Sample

SILENCE, UNKNOWN = "_silence_", "_unknown_"


@dataclass
class AudioWindow:
    features: np.ndarray  # (1, mels, frames) log-mel
    start_s: float
    end_s: float


@dataclass
class AudioClip:
    duration_s: float
    windows: list[AudioWindow]  # empty: no speech found


class AudioPrediction(BaseModel):
    label: str
    score: float
    start_s: float
    end_s: float
    scores: dict[str, float]
    speech: bool
    file: str | None = Field(
        description="the upload's filename", json_schema_extra={"tensor": False}
    )  # v2 sends no filenames


class AudioClassifyAnswer(Answer):
    predictions: list[AudioPrediction]


class AudioClassification(FileTask[AudioClip, np.ndarray, np.ndarray]):
    name = "audio-classification"
    route = "/audio/classify"
    client_method = "classify_audio"
    summary = "Spot keywords in audio clips (WAV, FLAC, OGG); one prediction per file, in order"
    default_model = "keywords"
    response_model = AudioClassifyAnswer
    file_field = "audio"
    content_types: ClassVar[dict[str, str]] = {
        ".wav": "audio/wav",
        ".flac": "audio/flac",
        ".ogg": "audio/ogg",
    }
    load_samples = 16

    def __init__(self, model_dir: Path, manifest: Manifest, session: Any, settings: Settings) -> None:
        super().__init__(model_dir, manifest, session, settings)
        from serving.processing.audio import LogMelFrontEnd, decode_audio
        from serving.processing.vad import SileroVAD

        self.front_end, self.decode = LogMelFrontEnd.from_config(manifest.preprocessing), decode_audio
        self.input_name = session.get_inputs()[0].name
        vad_file = manifest.preprocessing.get("vad")
        self.vad = SileroVAD(model_dir / vad_file) if vad_file else None

    def prepare_file(self, data: bytes) -> AudioClip:
        rate, window = self.front_end.sample_rate, self.front_end.window_seconds
        samples = self.decode(data, target_rate=rate)
        duration = len(samples) / rate
        if duration <= window * 1.05 or self.vad is None:
            return AudioClip(duration, [AudioWindow(self.front_end(samples), 0.0, round(duration, 3))])
        windows = []
        for start, end in self.vad.segments(samples):
            # segments longer than a window are covered by windows overlapping by half
            offsets = (
                np.arange(start, max(start, end - window) + 1e-9, window / 2)
                if end - start > window
                else [max(0.0, (start + end - window) / 2)]
            )
            for offset in offsets:
                piece = samples[int(offset * rate) : int((offset + window) * rate)]
                windows.append(
                    AudioWindow(
                        self.front_end(piece),
                        round(max(start, offset), 3),
                        round(min(end, offset + window), 3),
                    )
                )
        return AudioClip(duration, windows)

    def items(self, clips: list[AudioClip]) -> list[np.ndarray]:
        return [w.features for clip in clips for w in clip.windows]

    def run(self, features: list[np.ndarray]) -> list[np.ndarray]:
        (logits,) = self.session.run(None, {self.input_name: np.stack(features)})
        return list(softmax(logits))

    def answer(self, request: FileRequest, clips: list[AudioClip], probs: list[np.ndarray]) -> dict[str, Any]:
        predictions, used = [], 0
        for upload, clip in zip(request.files, clips):
            predictions.append(
                {**self.combine(clip, probs[used : used + len(clip.windows)]), "file": upload.filename}
            )
            used += len(clip.windows)
        return {"predictions": predictions}

    def combine(self, clip: AudioClip, probs: list[np.ndarray]) -> dict[str, Any]:
        labels = self.manifest.labels
        if not clip.windows:
            scores = {label: float(label == SILENCE) for label in labels}
            return {
                "label": SILENCE,
                "score": 1.0,
                "start_s": 0.0,
                "end_s": round(clip.duration_s, 3),
                "scores": scores,
                "speech": False,
            }
        keywords = [i for i, label in enumerate(labels) if label not in (SILENCE, UNKNOWN)]

        def strength(row: np.ndarray) -> float:  # a window counts by its best keyword when a keyword wins it
            best = int(row.argmax())
            return float(row[best]) + (1.0 if best in keywords else 0.0)

        best = 0 if len(probs) == 1 else max(range(len(probs)), key=lambda i: strength(probs[i]))
        row, window = probs[best], clip.windows[best]
        top = int(row.argmax())
        return {
            "label": labels[top],
            "score": float(row[top]),
            "start_s": window.start_s,
            "end_s": window.end_s,
            "scores": dict(zip(labels, row.tolist())),
            "speech": True,
        }

    @classmethod
    def samples(cls, count: int, model: str | None = None) -> list[Sample]:
        """One-second tones with a little noise, as 16-bit WAV."""
        rate = 16000
        rng = np.random.default_rng(0)
        t = np.arange(rate) / rate
        out = []
        for i in range(count):
            signal = 0.3 * np.sin(2 * np.pi * rng.uniform(120, 900) * t) + rng.normal(0, 0.02, t.size)
            buf = io.BytesIO()
            with wave.open(buf, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(rate)
                w.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
            out.append(
                Sample(
                    files=((f"clip{i}.wav", buf.getvalue(), "audio/wav"),),
                    fields=(("model", model),) if model else (),
                )
            )
        return out
