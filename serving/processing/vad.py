"""Voice-activity detection with the Silero VAD ONNX model (shipped in the model's folder).

The model scores 512-sample chunks of 16 kHz audio (each preceded by the previous chunk's last 64
samples, carrying a recurrent state); runs of speech chunks become segments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.sessions import create_session

CHUNK, CONTEXT, RATE = 512, 64, 16_000


class SileroVAD:
    def __init__(self, path: Path, threads: int = 1) -> None:
        self.session, _ = create_session(path, threads, ["CPUExecutionProvider"])

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Speech probability of each 32 ms chunk."""
        n = -(-len(samples) // CHUNK) * CHUNK
        padded = np.zeros(n, np.float32)
        padded[: len(samples)] = samples
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros((1, CONTEXT), np.float32)
        rate = np.array(RATE, dtype=np.int64)
        out = np.empty(n // CHUNK, np.float32)
        for i in range(0, n, CHUNK):
            x = np.concatenate([context, padded[None, i : i + CHUNK]], axis=1)
            prob, state = self.session.run(None, {"input": x, "state": state, "sr": rate})
            out[i // CHUNK] = float(prob.reshape(-1)[0])
            context = x[:, -CONTEXT:]
        return out

    def segments(
        self,
        samples: np.ndarray,
        threshold: float = 0.5,
        min_speech_s: float = 0.1,
        min_gap_s: float = 0.2,
        pad_s: float = 0.1,
    ) -> list[tuple[float, float]]:
        """(start_s, end_s) of speech: chunks above threshold, gaps shorter than min_gap_s bridged,
        segments shorter than min_speech_s dropped, pad_s added on both sides."""
        chunk_s = CHUNK / RATE
        runs: list[list[float]] = []
        for i, p in enumerate(self.probabilities(samples)):
            if p < threshold:
                continue
            start, end = i * chunk_s, (i + 1) * chunk_s
            if runs and start - runs[-1][1] < min_gap_s:
                runs[-1][1] = end
            else:
                runs.append([start, end])
        duration = len(samples) / RATE
        return [(max(0.0, s - pad_s), min(duration, e + pad_s)) for s, e in runs if e - s >= min_speech_s]
