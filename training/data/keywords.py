"""Synthetic one-second voice-command clips for keyword spotting demos.

Twelve classes:

* the ten keywords ``yes, no, up, down, left, right, on, off, stop, go``;
* ``_unknown_`` - any of ``UNKNOWN_WORDS``, short words that sound like no keyword;
* ``_silence_`` - no speech: near-digital silence, white/pink/brown noise, or noise with
  50/60 Hz mains hum, at a low random level.

Speech comes from espeak-ng. A voice is an English accent plus a voice variant, e.g.
``en-us+f3`` or ``en-gb-scotland+klatt2``; every clip also draws a random speed, pitch,
amplitude and word gap. The synthesised word is resampled to 16 kHz, trimmed of leading
and trailing near-silence, placed at a random offset in a 1.0 s window (a longer word
keeps its centre) and given a noise floor 40-60 dB below the speech, so no clip is
digitally silent around the word.

Held-out speakers: ``split_voices`` puts whole variants in the test split, in every
accent, so the test score measures how well a model copes with voices it never heard.
The last ``round(per_label * 0.2)`` clips of each class form the test split; speech
clips there use only test voices and the others only train voices.

Generation is deterministic: clip ``i`` of label ``LABELS[c]`` draws everything from
``numpy.random.default_rng([seed, c, i])`` and espeak-ng gives the same samples for the
same parameters, so the same seed gives byte-identical WAV files whatever order the
clips are made in.

Layout::

    <out_dir>/train/<label>/<index:04d>-<word or noise>.wav
    <out_dir>/test/<label>/<index:04d>-<word or noise>.wav
    <out_dir>/clips.csv      path,label,voice,split,speed,pitch,amplitude,gap

WAV files are 16-bit PCM, 16 kHz mono, exactly 16000 samples. In ``clips.csv`` paths
are relative to ``out_dir``; ``_silence_`` rows leave the voice and speech columns empty.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
LABELS = KEYWORDS + ("_unknown_", "_silence_")
UNKNOWN_WORDS: tuple[str, ...] = (
    "bed",
    "bird",
    "cat",
    "dog",
    "happy",
    "house",
    "tree",
    "wow",
    "seven",
    "learn",
    "follow",
    "forward",
    "backward",
    "visual",
    "marvin",
    "sheila",
    "zero",
    "three",
    "five",
    "six",
    "eight",
    "table",
    "chair",
    "water",
    "apple",
    "window",
    "green",
    "purple",
    "music",
    "paper",
    "river",
    "garden",
    "pencil",
    "orange",
    "kitchen",
    "bottle",
    "dinner",
    "basket",
    "camera",
    "finger",
)

ENGLISH_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
NOISE_KINDS = ("white", "pink", "brown", "hum50", "hum60")

RATE = 16000
CLIP_SAMPLES = RATE  # 1.0 s
TEST_FRACTION = 0.2
SPEED_RANGE = (110, 230)  # words per minute
PITCH_RANGE = (15, 85)  # espeak-ng 0-99
AMPLITUDE_RANGE = (60, 200)  # espeak-ng 0-200, 100 is normal
GAP_RANGE = (0, 10)  # pause between words, in 10 ms units
TRIM_LEVEL = 0.02  # of the peak: quieter leading/trailing samples are cut
NOISE_FLOOR_DB = (-60.0, -40.0)  # relative to the speech RMS
SILENCE_DBFS = (-90.0, -50.0)  # RMS of a _silence_ clip's noise
HUM_DBFS = (-80.0, -55.0)  # RMS of the hum added to some _silence_ clips
HUM_PROBABILITY = 0.3
LOWEST_HZ = 20.0  # pink and brown noise start here
HUM_HARMONICS = (1.0, 0.5, 0.3, 0.2, 0.1)  # amplitudes of the fundamental and overtones
WORKERS = 2


@dataclass(frozen=True)
class Clip:
    """One row of clips.csv; the speech columns are None for ``_silence_``."""

    path: str
    label: str
    voice: str | None
    split: str
    speed: int | None
    pitch: int | None
    amplitude: int | None
    gap: int | None


# ---------------------------------------------------------------- voices


def _espeak(*args: str) -> bytes:
    """Run espeak-ng and return its stdout; a clear error if it is not installed."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError(
            "espeak-ng is not installed: run `apt-get install espeak-ng` (`make setup` does this)"
        )
    return subprocess.run(["espeak-ng", *args], check=True, capture_output=True).stdout


def _voice_table(listing: str) -> list[str]:
    """The rows of an `espeak-ng --voices=...` table, without its header."""
    return listing.splitlines()[1:]


def espeak_voices() -> list[str]:
    """Voices as 'accent+variant' strings, every installed variant in every English accent.

    Accents follow ``ENGLISH_ACCENTS`` (those espeak-ng has), variants are sorted by name;
    variants whose file name holds a space cannot be named on the command line and are
    left out.
    """
    languages = {row.split()[1] for row in _voice_table(_espeak("--voices=en").decode())}
    accents = [accent for accent in ENGLISH_ACCENTS if accent in languages]
    variants = set()
    for row in _voice_table(_espeak("--voices=variant").decode()):
        match = re.search(r"!v/(.+?)\s*(\(.*\))?$", row.strip())
        if match and " " not in match.group(1):
            variants.add(match.group(1))
    return [f"{accent}+{variant}" for accent in accents for variant in sorted(variants)]


def _variant(voice: str) -> str:
    """The variant part of an 'accent+variant' voice."""
    accent, plus, variant = voice.partition("+")
    if not (accent and plus and variant):
        raise ValueError(f"voice {voice!r} is not 'accent+variant'")
    return variant


def split_voices(
    voices: list[str], test_fraction: float = TEST_FRACTION, seed: int = 5
) -> tuple[list[str], list[str]]:
    """Split voices into (train, test), holding out whole variants in every accent.

    ``round(test_fraction * variants)`` variants (at least one, and at least one left for
    training) go to test, chosen by ``seed``; both lists keep the input order.
    """
    variants = sorted({_variant(voice) for voice in voices})
    if len(variants) < 2:
        raise ValueError("need at least two voice variants to hold one out")
    n_test = min(max(round(test_fraction * len(variants)), 1), len(variants) - 1)
    order = np.random.default_rng(seed).permutation(len(variants))
    held_out = {variants[i] for i in order[:n_test]}
    train = [voice for voice in voices if _variant(voice) not in held_out]
    test = [voice for voice in voices if _variant(voice) in held_out]
    return train, test


# ---------------------------------------------------------------- audio


def make_noise(kind: str, n: int, rng: np.random.Generator, rate: int = RATE) -> np.ndarray:
    """n samples of unit-RMS float32 noise of a kind in ``NOISE_KINDS``.

    ``white`` is Gaussian; ``pink`` (power ~ 1/f) and ``brown`` (power ~ 1/f^2) shape white
    noise in the frequency domain, with nothing below 20 Hz; ``hum50``/``hum60`` are mains
    hum: the fundamental and four overtones with random phases.
    """
    if kind in ("hum50", "hum60"):
        fundamental = 50.0 if kind == "hum50" else 60.0
        t = np.arange(n) / rate
        phases = rng.uniform(0.0, 2 * np.pi, len(HUM_HARMONICS))
        signal = sum(
            a * np.sin(2 * np.pi * fundamental * (h + 1) * t + p)
            for h, (a, p) in enumerate(zip(HUM_HARMONICS, phases))
        )
    elif kind in ("white", "pink", "brown"):
        signal = rng.standard_normal(n)
        if kind != "white":
            freqs = np.fft.rfftfreq(n, 1.0 / rate)
            slope = 0.5 if kind == "pink" else 1.0  # amplitude ~ f^-slope
            gain = np.zeros_like(freqs)
            audible = freqs >= LOWEST_HZ
            gain[audible] = freqs[audible] ** -slope
            signal = np.fft.irfft(np.fft.rfft(signal) * gain, n)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {NOISE_KINDS}")
    return (signal / np.sqrt(np.mean(signal**2))).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _synthesise(word: str, voice: str, speed: int, pitch: int, amplitude: int, gap: int) -> np.ndarray:
    """espeak-ng's rendering of one word, as float32 at 16 kHz."""
    wav = _espeak(
        "-v",
        voice,
        "-s",
        str(speed),
        "-p",
        str(pitch),
        "-a",
        str(amplitude),
        "-g",
        str(gap),
        "--stdout",
        word,
    )
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(samples, rate, RATE)


def _trim(x: np.ndarray, level: float = TRIM_LEVEL) -> np.ndarray:
    """x without its leading and trailing samples quieter than `level` of the peak."""
    loud = np.flatnonzero(np.abs(x) >= level * np.abs(x).max())
    if loud.size == 0:
        raise RuntimeError("espeak-ng returned silence")
    return x[loud[0] : loud[-1] + 1]


def _place(x: np.ndarray, rng: np.random.Generator, n: int = CLIP_SAMPLES) -> np.ndarray:
    """x at a random offset in n samples of silence; a longer x keeps its central n."""
    if len(x) >= n:
        start = (len(x) - n) // 2
        return x[start : start + n]
    window = np.zeros(n, dtype=np.float32)
    offset = int(rng.integers(0, n - len(x) + 1))
    window[offset : offset + len(x)] = x
    return window


def _gain(rng: np.random.Generator, db_range: tuple[float, float]) -> float:
    """A linear gain for a level drawn uniformly from db_range (in dB)."""
    return 10.0 ** (rng.uniform(*db_range) / 20.0)


def _write_wav(path: Path, x: np.ndarray) -> None:
    """x (float, full scale 1.0) as 16-bit PCM, clipped to the int16 range."""
    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(path, pcm, RATE, subtype="PCM_16")


# ---------------------------------------------------------------- clips


def _speech_clip(
    label: str, split: str, voices: list[str], out_dir: Path, index: int, rng: np.random.Generator
) -> Clip:
    """One spoken clip: a keyword, or an unknown word for ``_unknown_``."""
    word = str(rng.choice(UNKNOWN_WORDS)) if label == "_unknown_" else label
    voice = str(rng.choice(voices))
    speed, pitch, amplitude, gap = (
        int(rng.integers(low, high + 1))
        for low, high in (SPEED_RANGE, PITCH_RANGE, AMPLITUDE_RANGE, GAP_RANGE)
    )
    speech = _trim(_synthesise(word, voice, speed, pitch, amplitude, gap))
    floor = _rms(speech) * _gain(rng, NOISE_FLOOR_DB)
    audio = _place(speech, rng) + floor * make_noise(str(rng.choice(NOISE_KINDS)), CLIP_SAMPLES, rng)
    path = Path(split) / label / f"{index:04d}-{word}.wav"
    _write_wav(out_dir / path, audio)
    return Clip(path.as_posix(), label, voice, split, speed, pitch, amplitude, gap)


def _silence_clip(split: str, out_dir: Path, index: int, rng: np.random.Generator) -> Clip:
    """One ``_silence_`` clip: quiet noise, sometimes with mains hum on top."""
    kind = str(rng.choice(NOISE_KINDS))
    audio = _gain(rng, SILENCE_DBFS) * make_noise(kind, CLIP_SAMPLES, rng)
    if rng.random() < HUM_PROBABILITY:
        hum = str(rng.choice(("hum50", "hum60")))
        audio += _gain(rng, HUM_DBFS) * make_noise(hum, CLIP_SAMPLES, rng)
        kind = f"{kind}+{hum}"
    path = Path(split) / "_silence_" / f"{index:04d}-{kind}.wav"
    _write_wav(out_dir / path, audio)
    return Clip(path.as_posix(), "_silence_", None, split, None, None, None, None)


def _split_of(index: int, per_label: int) -> str:
    """The last round(per_label * TEST_FRACTION) indices of each label are test clips."""
    return "test" if index >= per_label - round(per_label * TEST_FRACTION) else "train"


def generate_keyword_clips(
    out_dir: Path, per_label: int = 160, seed: int = 5, progress: bool = False
) -> Path:
    """Write per_label clips of every label under out_dir (see the module docstring)."""
    out_dir = Path(out_dir)
    pools = dict(zip(("train", "test"), split_voices(espeak_voices(), TEST_FRACTION, seed)))
    for split in pools:
        for label in LABELS:
            (out_dir / split / label).mkdir(parents=True, exist_ok=True)

    def make(job: tuple[int, int]) -> Clip:
        c, i = job
        label, split = LABELS[c], _split_of(i, per_label)
        rng = np.random.default_rng([seed, c, i])
        if label == "_silence_":
            return _silence_clip(split, out_dir, i, rng)
        return _speech_clip(label, split, pools[split], out_dir, i, rng)

    jobs = [(c, i) for c in range(len(LABELS)) for i in range(per_label)]
    with ThreadPoolExecutor(WORKERS) as pool:
        clips = list(tqdm(pool.map(make, jobs), total=len(jobs), desc="keyword clips", disable=not progress))
    with open(out_dir / "clips.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(Clip)])
        writer.writeheader()
        writer.writerows(asdict(clip) for clip in clips)
    return out_dir


def main() -> None:
    """Command line: write the dataset to the given folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--per-label", type=int, default=160)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    generate_keyword_clips(args.out_dir, args.per_label, args.seed, progress=True)
    print(args.out_dir)


if __name__ == "__main__":
    main()
