"""The generated keyword-spotting clips: layout, audio format, held-out voices, determinism."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.data.keywords import (
    KEYWORDS,
    LABELS,
    NOISE_KINDS,
    UNKNOWN_WORDS,
    espeak_voices,
    generate_keyword_clips,
    make_noise,
    split_voices,
)

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)
PER_LABEL = 4


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return generate_keyword_clips(tmp_path_factory.mktemp("keywords"), per_label=PER_LABEL, seed=3)


def rows(root: Path) -> list[dict[str, str]]:
    with open(root / "clips.csv", newline="") as f:
        return list(csv.DictReader(f))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def band_fraction(x: np.ndarray, low: float, high: float, rate: int = 16000) -> float:
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


def test_unknown_words_are_not_keywords():
    assert len(UNKNOWN_WORDS) >= 30 and len(set(UNKNOWN_WORDS)) == len(UNKNOWN_WORDS)
    assert not set(UNKNOWN_WORDS) & set(KEYWORDS)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noise_has_unit_rms(kind):
    x = make_noise(kind, 16000, np.random.default_rng(0))
    assert x.dtype == np.float32 and x.shape == (16000,)
    assert rms(x) == pytest.approx(1.0, rel=1e-3)


def test_noise_spectral_tilt():
    rng = np.random.default_rng(1)
    low = {kind: band_fraction(make_noise(kind, 16000, rng), 20, 500) for kind in ("white", "pink", "brown")}
    assert low["white"] < 0.1 < low["pink"] < low["brown"]
    assert low["brown"] > 0.9
    for kind, hz in (("hum50", 50), ("hum60", 60)):
        spectrum = np.abs(np.fft.rfft(make_noise(kind, 16000, rng)))
        assert np.fft.rfftfreq(16000, 1 / 16000)[spectrum.argmax()] == hz
    with pytest.raises(ValueError):
        make_noise("purple", 100, rng)


def test_split_holds_out_whole_variants():
    voices = [f"{accent}+{variant}" for accent in ("en-us", "en-gb") for variant in "abcdefghij"]
    train, test = split_voices(voices, test_fraction=0.2, seed=5)

    def variants(vs):
        return {v.split("+")[1] for v in vs}

    assert len(variants(test)) == 2 and not variants(train) & variants(test)
    assert sorted(train + test) == sorted(voices) and len(test) == 4
    assert split_voices(voices, 0.2, 5) == (train, test)


@needs_espeak
def test_installed_voices():
    voices = espeak_voices()
    assert voices == espeak_voices() and len(voices) == len(set(voices))
    assert "en-us+f3" in voices and {v.split("+")[0] for v in voices} >= {"en-us", "en-gb"}


@needs_espeak
def test_layout_and_labels(clips):
    table = rows(clips)
    assert len(table) == PER_LABEL * len(LABELS)
    for split in ("train", "test"):
        assert sorted(p.name for p in (clips / split).iterdir()) == sorted(LABELS)
    for row in table:
        path = clips / row["path"]
        assert path.parts[-3:-1] == (row["split"], row["label"]) and path.is_file()
        assert bool(row["voice"]) == (row["label"] != "_silence_")
    for label in LABELS:
        splits = sorted(row["split"] for row in table if row["label"] == label)
        assert splits == ["test"] + ["train"] * (PER_LABEL - 1)
    assert {p.relative_to(clips).as_posix() for p in clips.rglob("*.wav")} == {r["path"] for r in table}


@needs_espeak
def test_every_clip_is_one_second_of_16k_mono_pcm16(clips):
    for row in rows(clips):
        info = sf.info(clips / row["path"])
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")


@needs_espeak
def test_test_voices_are_held_out(clips):
    table = rows(clips)
    train = {r["voice"].split("+")[1] for r in table if r["split"] == "train" and r["voice"]}
    test = {r["voice"].split("+")[1] for r in table if r["split"] == "test" and r["voice"]}
    assert train and test and not train & test


@needs_espeak
def test_same_seed_gives_identical_files(clips, tmp_path):
    again = generate_keyword_clips(tmp_path, per_label=PER_LABEL, seed=3)
    for row in rows(clips):
        assert (again / row["path"]).read_bytes() == (clips / row["path"]).read_bytes(), row["path"]
    assert (again / "clips.csv").read_bytes() == (clips / "clips.csv").read_bytes()


@needs_espeak
def test_silence_is_quiet_and_speech_is_in_the_speech_band(clips):
    audio = {row["path"]: sf.read(clips / row["path"], dtype="float32")[0] for row in rows(clips)}
    silence = [rms(x) for path, x in audio.items() if "/_silence_/" in path]
    speech = [x for path, x in audio.items() if "/_silence_/" not in path]
    assert max(silence) < 0.1 * min(rms(x) for x in speech)  # at least 20 dB quieter
    assert all(np.mean(x == 0) < 0.5 for x in speech)  # the noise floor: never digital silence
    assert np.median([band_fraction(x, 80, 4000) for x in speech]) > 0.8
