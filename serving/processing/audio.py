"""Audio decoding and the log-mel front end, shared by training and serving (soundfile, soxr, numpy).

`decode_audio` reads WAV (8/16/24/32-bit integer and float), FLAC and OGG/Vorbis from bytes, checks
the header (sample rate ≥ 8 kHz, at most 30 s) before reading samples, mixes any channel count to
mono and resamples to 16 kHz with soxr. `LogMelFrontEnd` turns one-second windows into log-mel
spectrograms (Hann window, centred frames, Slaney mel scale and area normalisation — the same
definitions as librosa's defaults, which a test checks).

Both run once per uploaded clip in the server's prepare threads, so they avoid per-call work that
does not depend on the input: the window and filterbank are built once, STFT frames are strided
views rather than gathered copies, and the large intermediate arrays live in per-thread scratch
buffers (allocating and freeing a few hundred KiB per call costs more than the arithmetic, as glibc
returns such blocks to the kernel and every call page-faults them back in).
"""

from __future__ import annotations

import inspect
import io
import threading
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import soundfile as sf
import soxr
from numpy.lib.stride_tricks import sliding_window_view

from serving.errors import InputError

TARGET_RATE = 16_000
MIN_RATE = 8_000
MAX_SECONDS = 30.0
MAX_AUDIO_BYTES = 20 * 1024 * 1024
# From the header, before any sample is decoded: a few kilobytes of FLAC can claim hundreds of MiB.
MAX_RATE = 192_000
MAX_CHANNELS = 8
MAX_DECODED_BYTES = 32 * 1024 * 1024  # the samples as read (4 bytes each, 2 for 16-bit PCM)
BLOCK_FRAMES = 65_536  # frames read (and mixed to mono) at a time
# Float samples are full scale at ±1; far beyond that (or NaN/inf) the power spectrum overflows.
MAX_FLOAT_SAMPLE = 1000.0
FORMATS = {"WAV", "WAVEX", "FLAC", "OGG", "RF64", "W64"}
# Integer PCM is read as integers and scaled here: libsndfile's own int → float conversion is
# slower than numpy's vectorised one. The scale is the one libsndfile uses (full scale → ±1.0), so the samples
# are the same floats. Other subtypes (float, 8-bit, Vorbis, ...) are read as float32.
_INTEGER_READS = {"PCM_16": ("int16", 2.0**-15), "PCM_24": ("int32", 2.0**-31), "PCM_32": ("int32", 2.0**-31)}


class AudioError(InputError):
    """The bytes are not audio this server can use; the message says why."""


def decode_audio(
    data: bytes, target_rate: int = TARGET_RATE, max_seconds: float = MAX_SECONDS, min_rate: int = MIN_RATE
) -> np.ndarray:
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
            _check_length(rate, frames, min_rate, max_seconds)
            dtype, scale = _INTEGER_READS.get(f.subtype, ("float32", 1.0))
            _check_size(rate, f.channels, frames * f.channels * np.dtype(dtype).itemsize)
            # A block at a time, mixed to mono as it is read: a multi-channel clip never exists in
            # memory whole, only its mono mix does.
            mono = []
            while len(block := f.read(BLOCK_FRAMES, dtype=dtype, always_2d=True)):
                mono.append(_mix_to_mono(_finite(block), scale))
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        # libsndfile's message starts "Error opening <_io.BytesIO object at 0x...>: "; the reason follows
        reason = " ".join(str(exc).split()).split(">: ", 1)[-1]
        raise AudioError(f"not audio, or a corrupt header ({reason[:120]})") from None
    samples = mono[0] if len(mono) == 1 else np.concatenate(mono) if mono else np.empty(0, np.float32)
    if samples.shape[0] == 0:
        raise AudioError("no samples")
    if rate != target_rate:
        samples = soxr.resample(samples, rate, target_rate, quality="HQ")
    return np.ascontiguousarray(samples, dtype=np.float32)


def _finite(block: np.ndarray) -> np.ndarray:
    if block.dtype.kind == "f" and not -MAX_FLOAT_SAMPLE <= block.min() <= block.max() <= MAX_FLOAT_SAMPLE:
        raise AudioError(f"float samples must be finite and within ±{MAX_FLOAT_SAMPLE:g} (full scale is ±1)")
    return block


def _check_length(rate: int, frames: int, min_rate: int, max_seconds: float) -> None:
    if rate < min_rate:
        raise AudioError(f"sample rate {rate} Hz is below the minimum of {min_rate} Hz")
    if frames > max_seconds * rate:
        raise AudioError(f"{frames / rate:.1f} s long; the limit is {max_seconds:g} s")


def _check_size(rate: int, channels: int, decoded_bytes: int) -> None:
    if rate > MAX_RATE:
        raise AudioError(f"sample rate {rate} Hz is above the maximum of {MAX_RATE} Hz")
    if channels > MAX_CHANNELS:
        raise AudioError(f"{channels} channels; at most {MAX_CHANNELS} are accepted")
    if decoded_bytes > MAX_DECODED_BYTES:
        raise AudioError(
            f"decodes to {decoded_bytes / 2**20:.0f} MiB of samples; the limit is "
            f"{MAX_DECODED_BYTES / 2**20:.0f} MiB (send fewer channels, a lower rate or a shorter clip)"
        )


def _mix_to_mono(samples: np.ndarray, scale: float) -> np.ndarray:
    """(frames, channels) samples → float32 mono, the mean of the channels times `scale`.
    The channels are converted together and then added column by column: numpy's mean over a
    short last axis is a strided reduction, much slower than these few vector operations."""
    channels = samples.shape[1]
    if channels == 1 and samples.dtype == np.float32 and scale == 1.0:
        return samples[:, 0]
    converted = samples.astype(np.float32, copy=False)
    if channels == 1:
        mono = converted[:, 0] if converted is not samples else converted[:, 0].copy()
    else:
        mono = np.add(converted[:, 0], converted[:, 1])
    for c in range(2, channels):
        mono += converted[:, c]
    mono *= np.float32(scale / channels)
    return mono


def _hz_to_mel(hz: float | np.ndarray) -> np.ndarray:
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
    def from_config(cls, config: dict) -> LogMelFrontEnd:
        return cls(**{k: config[k] for k in cls.__dataclass_fields__ if k in config})

    def config(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {
            "window": "hann (periodic)",
            "centre": True,
            "mel_scale": "slaney",
            "mel_norm": "slaney",
            "power": 2.0,
            "log": "ln(mel + log_floor)",
        }

    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.sample_rate)

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
    def _hann(self) -> np.ndarray:
        """The non-zero part of the analysis window: periodic Hann of win_length samples (float64)."""
        n = np.arange(self.win_length)
        return 0.5 - 0.5 * np.cos(2 * np.pi * n / self.win_length)

    def _scratch(self, n_samples: int) -> _StftScratch:
        """This thread's STFT buffers for `n_samples` input samples (kept for the one-window length
        every request uses; other lengths get fresh buffers)."""
        key = (n_samples, self.n_fft, self.win_length, self.hop_length)
        if n_samples != self.window_samples:
            return _StftScratch(*key)
        cache = _thread_scratch.__dict__.setdefault("stft", {})
        if key not in cache:
            cache[key] = _StftScratch(*key)
        return cache[key]

    def _power(self, samples: np.ndarray) -> np.ndarray:
        """(frames, n_fft // 2 + 1) float32 |STFT|², frames centred on multiples of hop_length (zero
        padded). The array is this thread's scratch: valid until its next call in the same thread."""
        scratch = self._scratch(len(samples))
        half = self.n_fft // 2
        scratch.padded[half : half + len(samples)] = samples
        np.multiply(scratch.frames, self._hann, out=scratch.windowed[:, : self.win_length])
        if _RFFT_OUT:
            spectrum = np.fft.rfft(scratch.windowed, axis=1, out=scratch.spectrum)
        else:
            spectrum = np.fft.rfft(scratch.windowed, axis=1)
        parts = spectrum.view(np.float64).reshape(*spectrum.shape, 2)  # (frames, bins, re/im)
        np.square(parts, out=parts)
        np.add(parts[..., 0], parts[..., 1], out=scratch.power)
        return scratch.power

    def power_spectrogram(self, samples: np.ndarray) -> np.ndarray:
        """(n_fft // 2 + 1, frames) |STFT|², frames centred on multiples of hop_length (zero padded);
        the FFT runs in float64, the powers are rounded to float32 precision."""
        return self._power(samples).T.astype(np.float64)

    def fit_window(self, samples: np.ndarray) -> np.ndarray:
        """Exactly one window of samples: centred zero padding when short, the centre when long."""
        n = self.window_samples
        if len(samples) >= n:
            start = (len(samples) - n) // 2
            return samples[start : start + n]
        left = (n - len(samples)) // 2
        return np.pad(samples, (left, n - len(samples) - left))

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """One window of 16 kHz samples → (1, n_mels, frames) float32 log-mel (a new array)."""
        mel = self.filterbank @ self._power(self.fit_window(samples)).T
        mel += np.float32(self.log_floor)
        return np.log(mel, out=mel)[None]


# numpy ≥ 2.0 can write an FFT into a given array; older versions allocate the result.
_RFFT_OUT = "out" in inspect.signature(np.fft.rfft).parameters
_thread_scratch = threading.local()


class _StftScratch:
    """One thread's buffers for the STFT of `n_samples` samples.

    Frame f is padded[f * hop : f * hop + n_fft] times a window that is zero outside
    [left, left + win_length), so only that part is multiplied, and it goes at the start of the FFT
    input with zeros after it: a circular shift of the centred frame, which leaves |STFT|² as it is.
    """

    def __init__(self, n_samples: int, n_fft: int, win_length: int, hop_length: int) -> None:
        half = n_fft // 2
        self.padded = np.zeros(n_samples + 2 * half)  # the signal between n_fft // 2 zeros each side
        count = 1 + (len(self.padded) - n_fft) // hop_length
        left = (n_fft - win_length) // 2
        self.frames = sliding_window_view(self.padded, win_length)[left::hop_length][:count]  # views, no copy
        self.windowed = np.zeros((count, n_fft))  # columns from win_length on stay zero
        self.spectrum = np.empty((count, n_fft // 2 + 1), np.complex128)
        self.power = np.empty((count, n_fft // 2 + 1), np.float32)
