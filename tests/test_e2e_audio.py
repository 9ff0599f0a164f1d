"""Keywords: the tiny model built in the session (both candidate backbones), VAD on long clips, and
POST /v1/audio/classify against the real server with real files and bad input."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import httpx
import numpy as np
import pytest

from serving.manifest import load_manifest
from serving.processing.audio import decode_audio
from serving.processing.vad import SileroVAD
from serving.tasks import FileRequest, Upload

from .test_audio import encode, tone

ROUTE = "/v1/audio/classify"
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make setup installs it)"
)


def speech(text: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
    return decode_audio(wav)


def test_tiny_keywords_model_compared_both_backbones(tiny_repository):
    m = load_manifest(tiny_repository / "keywords")
    assert m.task == "audio-classification" and m.labels[-2:] == ["_unknown_", "_silence_"]
    assert {r["backbone"] for r in m.metrics["candidates"]} == {"efficientnet-lite0", "small-cnn"}
    assert "silero_vad.onnx" in m.files and m.preprocessing["vad"] == "silero_vad.onnx"
    assert m.variants["fp32"].parity["max_abs_diff"] <= 1e-4
    assert m.signature.inputs[0].shape == ["batch", 1, 64, 101]


@needs_espeak
def test_vad_finds_speech_in_the_middle(tiny_repository):
    word = speech("stop the music now")
    clip = np.concatenate([np.zeros(32000, np.float32), word, np.zeros(32000, np.float32)])
    segments = SileroVAD(tiny_repository / "keywords" / "silero_vad.onnx").segments(clip)
    assert len(segments) >= 1
    start, end = segments[0][0], segments[-1][1]
    spoken = len(word) / 16000
    assert 1.5 <= start <= 2.3 and 2.0 + spoken - 0.5 <= end <= 2.0 + spoken + 0.5
    assert (
        SileroVAD(tiny_repository / "keywords" / "silero_vad.onnx").segments(np.zeros(48000, np.float32))
        == []
    )


@needs_espeak
def test_formats_and_rates_in_one_request(server):
    word = speech("yes")
    files = []
    for i, (rate, fmt, subtype) in enumerate(
        [
            (16000, "WAV", "PCM_16"),
            (8000, "WAV", "PCM_U8"),
            (44100, "FLAC", "PCM_24"),
            (48000, "OGG", "VORBIS"),
            (22050, "WAV", "FLOAT"),
        ]
    ):
        import soxr

        files.append(
            (
                "audio",
                (
                    f"clip{i}.{fmt.lower()}",
                    encode(soxr.resample(word, 16000, rate), rate, fmt, subtype),
                    "application/octet-stream",
                ),
            )
        )
    r = httpx.post(server + ROUTE, data={"model": "keywords"}, files=files, timeout=60)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["file"] for p in preds] == [f[1][0] for f in files]
    for p in preds:
        assert p["label"] in p["scores"] and 0 <= p["start_s"] < p["end_s"] <= 1.01 and p["speech"] is True


@needs_espeak
def test_long_clips_use_vad(server):
    quiet = encode(np.zeros(16000 * 4, np.float32), 16000, "WAV", "PCM_16")
    r = httpx.post(server + ROUTE, files={"audio": ("quiet.wav", quiet)})
    assert r.status_code == 200
    (p,) = r.json()["predictions"]
    assert p["label"] == "_silence_" and p["speech"] is False and p["end_s"] == 4.0
    talk = np.concatenate([np.zeros(40000, np.float32), speech("go"), np.zeros(40000, np.float32)])
    (p,) = httpx.post(
        server + ROUTE, files={"audio": ("talk.wav", encode(talk, 16000, "WAV", "PCM_16"))}
    ).json()["predictions"]
    assert p["speech"] is True and 1.5 <= p["start_s"] and p["end_s"] <= len(talk) / 16000


@pytest.mark.parametrize(
    "name,data,status,needle",
    [
        ("empty.wav", b"", 400, "zero bytes"),
        ("notes.txt", b"not a sound at all, just words", 400, "not audio"),
        ("broken.wav", b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00garbage", 400, "corrupt header"),
        ("long.wav", None, 400, "limit is 30 s"),
        ("low.wav", False, 400, "below the minimum"),
    ],
)
def test_bad_audio_gets_a_4xx_naming_the_file(server, name, data, status, needle):
    if data is None:
        data = encode(np.zeros(8000 * 31, np.float32), 8000, "WAV", "PCM_16")
    elif data is False:
        data = encode(tone(4000), 4000, "WAV", "PCM_16")
    r = httpx.post(server + ROUTE, files={"audio": (name, data)})
    assert r.status_code == status, r.text
    assert f"'{name}'" in r.json()["error"] and needle in r.json()["error"]


def test_other_bad_requests(server):
    wav = encode(tone(16000), 16000, "WAV", "PCM_16")
    assert (
        httpx.post(server + ROUTE, data={"model": "nope"}, files={"audio": ("a.wav", wav)}).status_code == 404
    )
    r = httpx.post(server + ROUTE, files={"audio": (None, "https://example.com/a.wav")})
    assert r.status_code == 400 and "URLs are not fetched" in r.json()["error"]
    r = httpx.post(server + ROUTE, data={"model": "surface-defects"}, files={"audio": ("a.wav", wav)})
    assert r.status_code == 400 and "/v1/image/classify" in r.json()["error"]


def test_concurrent_clips_get_their_own_answers(server, tiny_repository):
    from serving.runtime import Runtime
    from serving.settings import Settings

    rng = np.random.default_rng(0)
    clips = [
        encode(
            (0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * np.arange(16000) / 16000)).astype(np.float32),
            16000,
            "WAV",
            "PCM_16",
        )
        for _ in range(24)
    ]
    model = Runtime(Settings(repository=tiny_repository, device="cpu", threads=1)).models["keywords"].task
    expected = [model.predict(FileRequest(None, [Upload(0, None, b)]))["predictions"][0] for b in clips]

    async def fire():
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            return await asyncio.gather(
                *[client.post(ROUTE, files={"audio": (f"{i}.wav", b)}) for i, b in enumerate(clips)]
            )

    for i, r in enumerate(asyncio.run(fire())):
        (p,) = r.json()["predictions"]
        assert p["file"] == f"{i}.wav"
        assert (
            max(abs(p["scores"][k] - expected[i]["scores"][k]) for k in p["scores"]) < 1e-4
        )  # batch-mates do not move scores


def test_many_clips_in_one_request_answer_like_one_each(server):
    """Dozens of files per request: answers in file order, each the same as sending the file alone;
    one bad file among them is named; too many files or a broken body is a 400."""
    rng = np.random.default_rng(1)
    clips = []
    for i in range(40):
        rate, channels = [(16000, 1), (44100, 2), (22050, 1), (48000, 2)][i % 4]
        signal = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * np.arange(rate) / rate)).astype(
            np.float32
        )
        clips.append(
            (
                f"clip-{i}-é.wav",
                encode(
                    np.stack([signal] * channels, axis=1) if channels > 1 else signal, rate, "WAV", "PCM_16"
                ),
            )
        )
    r = httpx.post(
        server + ROUTE, data={"model": "keywords"}, files=[("audio", c) for c in clips], timeout=60
    )
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["file"] for p in preds] == [name for name, _ in clips]
    for i in (0, 1, 2, 3, 39):
        (alone,) = httpx.post(server + ROUTE, files={"audio": clips[i]}, timeout=60).json()["predictions"]
        assert (
            alone["label"] == preds[i]["label"]
            and max(abs(alone["scores"][k] - preds[i]["scores"][k]) for k in alone["scores"]) < 1e-4
        )

    bad = (
        [("audio", c) for c in clips[:5]]
        + [("audio", ("broken.wav", b"RIFF not really"))]
        + [("audio", c) for c in clips[5:10]]
    )
    r = httpx.post(server + ROUTE, files=bad, timeout=60)
    assert r.status_code == 400 and "audio[5] ('broken.wav')" in r.json()["error"]
    r = httpx.post(server + ROUTE, files=[("audio", clips[0])] * 65, timeout=60)
    assert r.status_code == 400 and "Too many files" in r.json()["error"]
    r = httpx.post(
        server + ROUTE,
        content=b"--xyz\r\nnot a part",
        headers={"content-type": "multipart/form-data; boundary=abc"},
    )
    assert r.status_code == 400 and "malformed multipart body" in r.json()["error"]


def test_cli_predict_reads_audio_files(tiny_repository, tmp_path):
    import json
    import sys

    path = tmp_path / "beep.wav"
    path.write_bytes(encode(tone(22050, 0.8, 600.0, 2), 22050, "WAV", "PCM_16"))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "predict",
            "keywords",
            str(path),
            "--json",
            "--repository",
            str(tiny_repository),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    (p,) = json.loads(out.stdout)["predictions"]
    assert p["label"] in p["scores"] and p["end_s"] == 0.8
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "predict",
            "keywords",
            str(bad),
            "--repository",
            str(tiny_repository),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "not audio" in out.stderr


def test_backbone_comparison_is_decided_on_validation(tiny_repository):
    """keywords builds small-cnn beside EfficientNet-Lite0: the served validation metric per ms picks
    the backbone; each candidate's test metric is recorded, not used."""
    from serving.manifest import load_manifest

    m = load_manifest(tiny_repository / "keywords")
    rows = [r for r in m.metrics["candidates"] if r["passed_gate"]]
    assert {r["backbone"] for r in m.metrics["candidates"]} == {"efficientnet-lite0", "small-cnn"}
    for r in rows:
        assert {"val_accuracy", "test_accuracy"} <= set(r)
        assert r["metric_per_ms"] == pytest.approx(r["val_accuracy"] / r["ms_per_item"])
    best = max(rows, key=lambda r: r["metric_per_ms"])
    assert m.recipe["backbone"] == best["backbone"] and "best validation accuracy per ms" in m.default_reason
    served = m.default_variant["cpu"]
    assert (
        best["val_accuracy"] == m.metrics["validation"][served]["accuracy"]
        and best["test_accuracy"] == m.variants[served].metrics["accuracy"]
    )
