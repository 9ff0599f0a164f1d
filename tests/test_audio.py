"""The audio front end: decoding every format and rate, and the log-mel features vs librosa."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import soxr

from serving.processing.audio import AudioError, LogMelFrontEnd, decode_audio

pytestmark = pytest.mark.fast  # in-process, no training, no server


def tone(rate: int, seconds: float = 1.0, hz: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * hz * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def encode(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def dominant_hz(x: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(
    "fmt,subtype",
    [
        ("WAV", "PCM_U8"),
        ("WAV", "PCM_16"),
        ("WAV", "PCM_24"),
        ("WAV", "PCM_32"),
        ("WAV", "FLOAT"),
        ("FLAC", "PCM_16"),
        ("OGG", "VORBIS"),
    ],
)
def test_formats_decode(fmt, subtype):
    out = decode_audio(encode(tone(16000), 16000, fmt, subtype))
    assert out.dtype == np.float32 and abs(len(out) - 16000) <= 16
    assert abs(dominant_hz(out) - 440) < 5 and 0.3 < np.abs(out).max() < 0.6


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_any_rate_and_channel_count_becomes_16k_mono(rate, channels):
    out = decode_audio(encode(tone(rate, 1.0, 1000.0, channels), rate, "WAV", "PCM_16"))
    assert abs(len(out) - 16000) <= 2
    assert abs(dominant_hz(out) - 1000) < 5


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"", "zero bytes"),
        (b"RIFF\x00\x00\x00\x00WAVEjunkjunk", "corrupt header"),
        (b"this is a text file, not a recording", "not audio"),
        (None, "below the minimum"),
        (False, "limit is 30 s"),
    ],
)
def test_bad_audio_is_refused_with_a_reason(data, needle):
    if data is None:
        data = encode(tone(4000), 4000, "WAV", "PCM_16")
    elif data is False:
        data = encode(np.zeros(8000 * 31, np.float32), 8000, "WAV", "PCM_16")
    with pytest.raises(AudioError, match=needle):
        decode_audio(data)


def test_front_end_matches_librosa():
    import librosa

    fe = LogMelFrontEnd()
    reference_fb = librosa.filters.mel(
        sr=fe.sample_rate, n_fft=fe.n_fft, n_mels=fe.n_mels, fmin=fe.fmin, fmax=fe.fmax
    )
    np.testing.assert_allclose(fe.filterbank, reference_fb, rtol=1e-5, atol=1e-8)

    rng = np.random.default_rng(0)
    x = (0.3 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000) + 0.05 * rng.standard_normal(16000)).astype(
        np.float32
    )
    mel = librosa.feature.melspectrogram(
        y=x,
        sr=16000,
        n_fft=fe.n_fft,
        hop_length=fe.hop_length,
        win_length=fe.win_length,
        window="hann",
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=fe.n_mels,
        fmin=fe.fmin,
        fmax=fe.fmax,
    )
    ours = fe(x)[0]
    assert ours.shape == mel.shape == (64, 101)
    np.testing.assert_allclose(ours, np.log(mel + fe.log_floor), rtol=1e-4, atol=1e-4)


def test_windows_are_padded_or_centred():
    fe = LogMelFrontEnd()
    assert len(fe.fit_window(np.ones(100, np.float32))) == 16000
    long = np.arange(40000, dtype=np.float32)
    assert fe.fit_window(long)[0] == 12000
    assert LogMelFrontEnd.from_config(fe.config()) == fe


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_integer_reads_and_column_mixing_give_libsndfiles_samples(channels, subtype):
    """Integer PCM is read as integers and scaled in numpy, channels mixed column by column: the
    result must be libsndfile's own float conversion averaged over the channels."""
    rng = np.random.default_rng(channels)
    audio = rng.uniform(-0.9, 0.9, size=(22050 + 3, channels)).astype(np.float32)
    data = encode(audio if channels > 1 else audio[:, 0], 22050, "WAV", subtype)
    reference, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    expected = soxr.resample(reference.mean(axis=1), 22050, 16000, quality="HQ").astype(np.float32)
    np.testing.assert_allclose(decode_audio(data), expected, rtol=0, atol=1e-6)
    at_16k = encode(
        audio if channels > 1 else audio[:, 0], 16000, "WAV", subtype
    )  # no resampling: the mix itself
    np.testing.assert_allclose(
        decode_audio(at_16k),
        sf.read(io.BytesIO(at_16k), dtype="float32", always_2d=True)[0].mean(axis=1),
        rtol=0,
        atol=1e-7,
    )


@pytest.mark.parametrize("length", [100, 8000, 16000, 40000])
def test_front_end_matches_the_direct_definition(length):
    """Features of short (padded), exact and long (centre) inputs vs a plain float64 STFT."""
    fe = LogMelFrontEnd()
    x = np.random.default_rng(length).standard_normal(length).astype(np.float32) * 0.1
    left = (fe.n_fft - fe.win_length) // 2
    window = np.pad(
        0.5 - 0.5 * np.cos(2 * np.pi * np.arange(fe.win_length) / fe.win_length),
        (left, fe.n_fft - fe.win_length - left),
    )
    padded = np.pad(fe.fit_window(x).astype(np.float64), fe.n_fft // 2)
    frames = np.stack([padded[i : i + fe.n_fft] for i in range(0, len(padded) - fe.n_fft + 1, fe.hop_length)])
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    expected = np.log(fe.filterbank.astype(np.float64) @ power.T + fe.log_floor)
    ours = fe(x)
    assert ours.shape == (1, 64, 101) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[0], expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(fe.power_spectrogram(fe.fit_window(x)), power.T, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize(
    "rate,channels,seconds,needle",
    [
        (384_000, 1, 0.1, "above the maximum of 192000 Hz"),
        (16_000, 12, 0.1, "12 channels; at most 8"),
        (192_000, 8, 12.0, "decodes to 35 MiB of samples; the limit is 32 MiB"),
    ],
)
def test_audio_that_would_decode_too_large_is_refused_from_its_header(rate, channels, seconds, needle):
    """FLAC of silence compresses to almost nothing: the header's claims decide, not the file size."""
    fmt = "FLAC" if channels <= 8 else "WAV"  # FLAC holds at most 8 channels
    data = encode(np.zeros((int(rate * seconds), channels), np.int16), rate, fmt, "PCM_16")
    assert len(data) < 200_000
    with pytest.raises(AudioError, match=needle):
        decode_audio(data)


def test_eight_channels_at_48_khz_for_the_whole_limit_decode_a_block_at_a_time():
    """Only the mono mix is ever held whole: 30 s of 8 channels are 23 MiB as 16-bit samples and
    46 MiB as floats, the mono mix at 48 kHz under 6 MiB."""
    import tracemalloc

    data = encode(tone(48_000, 30.0, 1000.0, 8), 48_000, "FLAC", "PCM_16")
    tracemalloc.start()
    try:
        out = decode_audio(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB to decode"
    assert abs(len(out) - 30 * 16_000) <= 2 and abs(dominant_hz(out[:16000]) - 1000) < 5
