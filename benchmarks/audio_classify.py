"""Keyword spotting, measured side by side in one run:

1. engines on the same log-mel windows: PyTorch eager, ONNX Runtime fp32 and INT8, batch 1/8/32;
2. the served endpoint (a real BentoML server) at concurrency 1/8/32, one WAV clip per request at
   44.1 kHz stereo, so decoding, resampling and features are in the loop.

Writes benchmarks/results/audio_classify.{json,md}. Run: `make bench` or
`python benchmarks/audio_classify.py`.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import eager_model, model_benchmark_args, serve_and_sweep, served_table, time_engines, write_results  # noqa: E402
from serving.loadtest.payloads import Payload  # noqa: E402
from serving.manifest import load_manifest  # noqa: E402
from serving.processing.audio import LogMelFrontEnd, decode_audio  # noqa: E402
from serving.sessions import create_session  # noqa: E402
from training.data.images import read_class_folder, resolve_dataset_folder  # noqa: E402
from training.recipe import Recipe  # noqa: E402
from training.tasks.audio_classification import AUDIO_SUFFIXES  # noqa: E402

ROUTE = "/v1/audio/classify"


def main() -> None:
    args = model_benchmark_args(__doc__, "keywords", "1,8,32")
    repository = Path(args.repository)
    model_dir = repository / args.model
    manifest = load_manifest(model_dir)
    recipe = Recipe.model_validate(manifest.recipe)
    root = resolve_dataset_folder(recipe.data.source, recipe.data.seed)
    paths, _ = read_class_folder(root / "test" if (root / "test").is_dir() else root, AUDIO_SUFFIXES)
    rng = np.random.default_rng(0)
    paths = [paths[i] for i in rng.choice(len(paths), size=min(64, len(paths)), replace=False)]
    front_end = LogMelFrontEnd.from_config(manifest.preprocessing)
    windows = [front_end(decode_audio(p.read_bytes())) for p in paths]

    print(f"engines ({args.threads} threads):", flush=True)
    eager = eager_model(model_dir)
    torch.set_num_threads(args.threads)
    sessions = {v: create_session(model_dir / manifest.variants[v].file, args.threads, ["CPUExecutionProvider"])[0] for v in manifest.variants}
    engine_rows = []
    for bs in [int(b) for b in args.batches.split(",")]:
        batch = np.stack([windows[i % len(windows)] for i in range(bs)])
        tensor = torch.from_numpy(batch)

        def run_eager():
            with torch.inference_mode():
                eager(tensor)

        runs = {"pytorch_eager": run_eager} | {f"onnxruntime_{v}": (lambda s=s: s.run(None, {s.get_inputs()[0].name: batch})) for v, s in sessions.items()}
        engine_rows += time_engines(runs, bs, args.engine_seconds, "windows")

    payloads = []
    for i, p in enumerate(paths):  # what a phone or a call-centre recorder sends: 44.1 kHz stereo
        stereo = np.repeat(soxr.resample(decode_audio(p.read_bytes()), 16000, 44100)[:, None], 2, axis=1)
        buf = io.BytesIO()
        sf.write(buf, stereo, 44100, format="WAV", subtype="PCM_16")
        payloads.append(Payload(files=((f"{i}.wav", buf.getvalue(), "audio/wav"),), file_field="audio", fields=(("model", args.model),)))
    print("served endpoint (one 44.1 kHz stereo WAV per request):", flush=True)
    info, served = serve_and_sweep(repository, args.model, ROUTE, payloads, [int(c) for c in args.concurrency.split(",")], args.served_seconds)

    variant = info["variant"]
    raw32 = next(e["windows_per_s"] for e in engine_rows if e["engine"] == f"onnxruntime_{variant}" and e["batch"] == 32)
    c32 = next((s for s in served if s["load"] == 32), served[-1])
    ratio = c32["throughput_rps"] / raw32
    report = {"model": args.model, "served_variant": variant, "served_reason": manifest.default_reason,
              "test_accuracy": manifest.variants[variant].metrics.get("accuracy"), "candidates": manifest.metrics.get("candidates"),
              "cores": os.cpu_count(), "config": vars(args), "engines": engine_rows, "served": served, "served_c32_vs_engine_b32": ratio}
    lines = [
        f"# Keyword spotting benchmark — `{args.model}`",
        "",
        f"{os.cpu_count()} cores; served variant `{variant}` ({manifest.default_reason}); held-out-voice test accuracy {report['test_accuracy']:.4f}.",
        "",
        "| engine | batch | windows/s | ms/batch |",
        "|---|---:|---:|---:|",
        *[f"| {e['engine']} | {e['batch']} | {e['windows_per_s']:.1f} | {e['ms_per_batch']:.2f} |" for e in engine_rows],
        "",
        *served_table(served, "clips/s"),
        "",
        f"- served clips/s at concurrency 32 vs raw `{variant}` engine windows/s at batch 32: **{ratio * 100:.1f}%** (target ≥ 50%)",
        "",
    ]
    write_results("audio_classify", report, lines)


if __name__ == "__main__":
    main()
