"""Audio decoding and the log-mel front end, shared by training and serving (soundfile, soxr, numpy).

`decode_audio` reads WAV (8/16/24/32-bit integer and float), FLAC and OGG/Vorbis from bytes, checks
the header (sample rate ≥ 8 kHz, at most 30 s) before reading samples, mixes any channel count to
mono and resamples to 16 kHz with soxr. `LogMelFrontEnd` turns one-second windows into log-mel
spectrograms (Hann window, centred frames, Slaney mel scale and area normalisation — the same
definitions as librosa's defaults, which a test checks).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import soundfile as sf
import soxr

TARGET_RATE = 16_000
MIN_RATE = 8_000
MAX_SECONDS = 30.0
MAX_AUDIO_BYTES = 20 * 1024 * 1024
FORMATS = {"WAV", "WAVEX", "FLAC", "OGG", "RF64", "W64"}


class AudioError(ValueError):
    """The bytes are not audio this server can use; the message says why."""


def decode_audio(data: bytes, target_rate: int = TARGET_RATE, max_seconds: float = MAX_SECONDS, min_rate: int = MIN_RATE) -> np.ndarray:
    """Bytes → mono float32 samples at `target_rate`. Raises AudioError naming what is wrong."""
    if not data:
        raise AudioError("zero bytes")
    if len(data) > MAX_AUDIO_BYTES:
        raise AudioError(f"{len(data) / 2**20:.1f} MiB; the limit is {MAX_AUDIO_BYTES / 2**20:.0f} MiB")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, frames, fmt = f.samplerate, f.frames, f.format
            if fmt not in FORMATS:
                raise AudioError(f"{fmt} audio is not supported; send WAV, FLAC or OGG/Vorbis")
            if rate < min_rate:
                raise AudioError(f"sample rate {rate} Hz is below the minimum of {min_rate} Hz")
            if frames > max_seconds * rate:
                raise AudioError(f"{frames / rate:.1f} s long; the limit is {max_seconds:g} s")
            samples = f.read(dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"not audio, or a corrupt header ({' '.join(str(exc).split())[:120]})") from None
    if samples.shape[0] == 0:
        raise AudioError("no samples")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


@dataclass(frozen=True)
class LogMelFrontEnd:
    sample_rate: int = TARGET_RATE
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_mels: int = 64
    fmin: float = 20.0
    fmax: float = 8000.0
    window_seconds: float = 1.0
    log_floor: float = 1e-6

    @classmethod
    def from_config(cls, config: dict) -> "LogMelFrontEnd":
        return cls(**{k: config[k] for k in cls.__dataclass_fields__ if k in config})

    def config(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"window": "hann (periodic)", "centre": True, "mel_scale": "slaney", "mel_norm": "slaney", "power": 2.0, "log": "ln(mel + log_floor)"}

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @cached_property
    def filterbank(self) -> np.ndarray:
        """(n_mels, n_fft // 2 + 1) triangular filters, area-normalised (Slaney)."""
        freqs = np.linspace(0, self.sample_rate / 2, self.n_fft // 2 + 1)
        edges = _mel_to_hz(np.linspace(_hz_to_mel(self.fmin), _hz_to_mel(self.fmax), self.n_mels + 2))
        widths = np.diff(edges)
        ramps = edges[:, None] - freqs[None, :]
        lower = -ramps[:-2] / widths[:-1, None]
        upper = ramps[2:] / widths[1:, None]
        weights = np.maximum(0, np.minimum(lower, upper))
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
        return weights.astype(np.float32)

    @cached_property
    def _window(self) -> np.ndarray:
        n = np.arange(self.win_length)
        hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / self.win_length)  # periodic Hann
        left = (self.n_fft - self.win_length) // 2
        return np.pad(hann, (left, self.n_fft - self.win_length - left))

    def power_spectrogram(self, samples: np.ndarray) -> np.ndarray:
        """(n_fft // 2 + 1, frames) |STFT|², frames centred on multiples of hop_length (zero padded)."""
        padded = np.pad(samples.astype(np.float64), self.n_fft // 2)
        frames = 1 + (len(padded) - self.n_fft) // self.hop_length
        index = np.arange(self.n_fft)[None, :] + self.hop_length * np.arange(frames)[:, None]
        spectrum = np.fft.rfft(padded[index] * self._window, axis=1)
        return (np.abs(spectrum) ** 2).T

    def fit_window(self, samples: np.ndarray) -> np.ndarray:
        """Exactly one window of samples: centred zero padding when short, the centre when long."""
        n = self.window_samples
        if len(samples) >= n:
            start = (len(samples) - n) // 2
            return samples[start : start + n]
        left = (n - len(samples)) // 2
        return np.pad(samples, (left, n - len(samples) - left))

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """One window of 16 kHz samples → (1, n_mels, frames) float32 log-mel."""
        mel = self.filterbank.astype(np.float64) @ self.power_spectrogram(self.fit_window(samples))
        return np.log(mel + self.log_floor).astype(np.float32)[None]
