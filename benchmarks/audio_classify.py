"""Keyword spotting, measured side by side in one run:

1. engines on the same log-mel windows: PyTorch eager, ONNX Runtime fp32 and INT8, batch 1/8/32;
2. the served endpoint (a real BentoML server) at concurrency 1/8/32, with 44.1 kHz stereo WAV clips,
   so decoding, resampling and features are in the loop: once for each number of clips per request
   (`--clips-per-request`, default 1,8; a fresh server for each). Throughput counts clips; latencies
   are per request, i.e. for all of its clips.

Writes benchmarks/results/audio_classify.{json,md}. Run: `make bench` or
`python benchmarks/audio_classify.py [--clips-per-request 1,8,32]`.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (
    OtherLoad,
    eager_model,
    model_benchmark_args,
    serve_and_sweep,
    served_table,
    time_engines,
    write_results,
)
from serving.loadtest.payloads import Payload
from serving.manifest import load_manifest
from serving.processing.audio import LogMelFrontEnd, decode_audio
from serving.sessions import create_session
from training.data.images import read_class_folder, resolve_dataset_folder
from training.recipe import Recipe
from training.tasks.audio_classification import AUDIO_SUFFIXES

ROUTE = "/v1/audio/classify"


def main() -> None:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--clips-per-request", default="1,8")
    own_args, rest = own.parse_known_args()
    sys.argv = [sys.argv[0], *rest]  # the shared options are parsed by the harness
    args = model_benchmark_args(__doc__, "keywords", "1,8,32")
    args.clips_per_request = own_args.clips_per_request
    clips_per_request = [int(k) for k in args.clips_per_request.split(",")]
    others = OtherLoad()
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
    engines_start = others.mark()
    eager = eager_model(model_dir)
    torch.set_num_threads(args.threads)
    sessions = {
        v: create_session(model_dir / manifest.variants[v].file, args.threads, ["CPUExecutionProvider"])[0]
        for v in manifest.variants
    }
    engine_rows = []
    for bs in [int(b) for b in args.batches.split(",")]:
        batch = np.stack([windows[i % len(windows)] for i in range(bs)])
        tensor = torch.from_numpy(batch)

        def run_eager():
            with torch.inference_mode():
                eager(tensor)

        runs = {"pytorch_eager": run_eager} | {
            f"onnxruntime_{v}": (lambda s=s: s.run(None, {s.get_inputs()[0].name: batch}))
            for v, s in sessions.items()
        }
        engine_rows += time_engines(runs, bs, args.engine_seconds, "windows")

    other_cores = {"engines": others.cores_since(engines_start)}
    clips = []
    for i, p in enumerate(paths):  # what a phone or a call-centre recorder sends: 44.1 kHz stereo
        stereo = np.repeat(soxr.resample(decode_audio(p.read_bytes()), 16000, 44100)[:, None], 2, axis=1)
        buf = io.BytesIO()
        sf.write(buf, stereo, 44100, format="WAV", subtype="PCM_16")
        clips.append((f"{i}.wav", buf.getvalue(), "audio/wav"))

    variant, served = None, []
    for k in clips_per_request:
        # every clip equally often; consecutive requests carry different clips
        payloads = [
            Payload(
                files=tuple(clips[(j * k + q) % len(clips)] for q in range(k)),
                file_field="audio",
                fields=(("model", args.model),),
            )
            for j in range(len(clips) // math.gcd(len(clips), k))
        ]
        print(
            f"served endpoint ({k} 44.1 kHz stereo WAV clip{'s' if k > 1 else ''} per request):", flush=True
        )
        served_start = others.mark()
        info, rows = serve_and_sweep(
            repository,
            args.model,
            ROUTE,
            payloads,
            [int(c) for c in args.concurrency.split(",")],
            args.served_seconds,
        )
        variant = info["variant"]
        for row in rows:
            row |= {
                "clips_per_request": k,
                "requests_per_s": row["throughput_rps"],
                "clips_per_s": row["throughput_rps"] * k,
            }
            print(f"    c={row['load']:g}: {row['clips_per_s']:.1f} clips/s", flush=True)
        served += rows
        other_cores[f"served_{k}_per_request"] = others.cores_since(served_start)

    raw32 = next(
        e["windows_per_s"]
        for e in engine_rows
        if e["engine"] == f"onnxruntime_{variant}" and e["batch"] == 32
    )
    ratios = {}
    for k in clips_per_request:
        rows = [s for s in served if s["clips_per_request"] == k]
        c32 = next((s for s in rows if s["load"] == 32), rows[-1])
        ratios[k] = {
            "concurrency": c32["load"],
            "clips_per_s": c32["clips_per_s"],
            "ratio": c32["clips_per_s"] / raw32,
        }
    report = {
        "model": args.model,
        "served_variant": variant,
        "served_reason": manifest.default_reason,
        "test_accuracy": manifest.variants[variant].metrics.get("accuracy"),
        "candidates": manifest.metrics.get("candidates"),
        "cores": os.cpu_count(),
        "other_processes_cores": other_cores,
        "config": vars(args),
        "engines": engine_rows,
        "served": served,
        "engine_windows_per_s_b32": raw32,
        "served_c32_vs_engine_b32": {str(k): r["ratio"] for k, r in ratios.items()},
    }
    lines = [
        f"# Keyword spotting benchmark — `{args.model}`",
        "",
        f"{os.cpu_count()} cores; served variant `{variant}` ({manifest.default_reason}); held-out-voice test accuracy {report['test_accuracy']:.4f}.",
        "The load generator runs on the same cores as the server. "
        + (
            f"Other processes on the machine used on average {other_cores['engines']:.2f} of the {os.cpu_count()} cores during the engine timings and "
            + " / ".join(f"{other_cores[f'served_{k}_per_request']:.2f}" for k in clips_per_request)
            + f" during the served runs at {' / '.join(map(str, clips_per_request))} clips per request."
            if None not in other_cores.values()
            else ""
        ),
        "",
        "| engine | batch | windows/s | ms/batch |",
        "|---|---:|---:|---:|",
        *[
            f"| {e['engine']} | {e['batch']} | {e['windows_per_s']:.1f} | {e['ms_per_batch']:.2f} |"
            for e in engine_rows
        ],
    ]
    for k in clips_per_request:
        shown = [s | {"throughput_rps": s["clips_per_s"]} for s in served if s["clips_per_request"] == k]
        lines += [
            "",
            f"Served, {k} clip{'s' if k > 1 else ''} (44.1 kHz stereo WAV) per request; clips/s counts clips, latencies are per request:",
            "",
            *served_table(shown, "clips/s"),
        ]
    lines += (
        [""]
        + [
            f"- served clips/s at concurrency {r['concurrency']:g}, {k} clip{'s' if k > 1 else ''} per request ({r['clips_per_s']:.1f}) vs raw `{variant}` engine "
            f"windows/s at batch 32 ({raw32:.1f}): **{r['ratio'] * 100:.1f}%** (target ≥ 50%)"
            for k, r in ratios.items()
        ]
        + [""]
    )
    write_results("audio_classify", report, lines)


if __name__ == "__main__":
    main()
