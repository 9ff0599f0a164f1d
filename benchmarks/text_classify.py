"""Text classification, measured side by side in one run:

1. engines on the same pre-tokenised batches: PyTorch eager, ONNX Runtime fp32 and INT8, batch 1/8/32;
2. the served endpoint (a real BentoML server on a local port) at concurrency 1/8/32/64;
3. the baseline server (benchmarks/baselines/eager_text_server.py: PyTorch eager, one request per
   forward pass) under the same load.

Writes benchmarks/results/text_classify.{json,md}. Targets are ratios inside this one run.
Run: `make bench` (or `python benchmarks/text_classify.py --help`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (
    closed_loop_sweep,
    eager_model,
    free_port,
    machine_info,
    model_benchmark_args,
    serve_and_sweep,
    served_table,
    server,
    time_engines,
    write_results,
)
from serving.loadtest.payloads import json_payload
from serving.manifest import load_manifest
from serving.processing import TextPreprocessor
from serving.sessions import create_session
from training.data.text import read_labelled_texts, resolve_source
from training.recipe import Recipe

ROUTE = "/v1/text/classify"


def engine_benchmarks(
    model_dir: Path, texts: list[str], batch_sizes: list[int], seconds: float, threads: int
) -> list[dict]:
    manifest = load_manifest(model_dir)
    pre = TextPreprocessor.from_config(model_dir, manifest.preprocessing)
    eager = eager_model(model_dir)
    torch.set_num_threads(threads)
    sessions = {
        v: create_session(model_dir / manifest.variants[v].file, threads, ["CPUExecutionProvider"])[0]
        for v in manifest.variants
    }

    rows = []
    for bs in batch_sizes:
        batches = [pre.encode(texts[i : i + bs]) for i in range(0, bs * 8, bs)]
        feeds = [{"input_ids": b.input_ids, "attention_mask": b.attention_mask} for b in batches]
        tensors = [(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"])) for f in feeds]
        it = {"i": 0}

        def nxt():
            it["i"] = (it["i"] + 1) % len(feeds)
            return it["i"]

        def run_eager():
            with torch.inference_mode():
                eager(*tensors[nxt()])

        engines = {"pytorch_eager": run_eager}
        for variant, session in sessions.items():
            engines[f"onnxruntime_{variant}"] = lambda s=session: s.run(None, feeds[nxt()])
        rows += time_engines(engines, bs, seconds, "seq")
    return rows


def write_report(report: dict) -> None:
    r = report["ratios"]
    lines = [
        f"# Text classification benchmark — `{report['model']}`",
        "",
        f"{report['machine']['cpu']}, {report['machine']['cores']} cores; ONNX Runtime {report['machine']['onnxruntime']}, torch {report['machine']['torch']}; "
        f"{report['config']['threads']} intra-op threads; served variant `{report['served_variant']}`.",
        "",
        "## Engines (same pre-tokenised batches)",
        "",
        "| engine | batch | seq/s | ms/batch |",
        "|---|---:|---:|---:|",
        *[
            f"| {e['engine']} | {e['batch']} | {e['seq_per_s']:.1f} | {e['ms_per_batch']:.2f} |"
            for e in report["engines"]
        ],
        "",
        "## Served endpoint (`POST /v1/text/classify`, one text per request, closed loop)",
        "",
        *served_table(report["served"]),
        "",
        "## Baseline server (PyTorch eager, one request per forward pass, same contract and load)",
        "",
        *served_table(report["baseline"]),
        "",
        "## Ratios",
        "",
        f"- INT8 vs PyTorch eager at batch 32: **{r['int8_vs_eager_b32']:.2f}×** (target ≥ 3×)",
        f"- INT8 model file vs fp32: **{r['int8_size_vs_fp32'] * 100:.1f}%** (target ≤ 30%)",
        f"- served req/s at concurrency 64 vs raw INT8 seq/s at batch 32: **{r['served_c64_vs_int8_b32'] * 100:.1f}%** (target ≥ 70%)",
        f"- served vs baseline req/s at concurrency 32: **{r['served_vs_baseline_c32']:.1f}×** (target ≥ 5×)",
        f"- non-2xx responses at concurrency ≤ 64: **{r['non_2xx_total']}** (target 0)",
        f"- served variant test accuracy: **{report['served_accuracy'] * 100:.2f}%** (target ≥ 95%)",
        "",
    ]
    write_results("text_classify", report, lines)


def main() -> None:
    args = model_benchmark_args(__doc__, "intent", "1,8,32,64")

    repository = Path(args.repository)
    model_dir = repository / args.model
    manifest = load_manifest(model_dir)
    recipe = Recipe.model_validate(manifest.recipe)
    texts = [t for t, _ in read_labelled_texts(resolve_source(recipe.data.source))]
    np.random.default_rng(0).shuffle(texts)

    print(f"engines ({args.threads} threads):", flush=True)
    engines = engine_benchmarks(
        model_dir, texts, [int(b) for b in args.batches.split(",")], args.engine_seconds, args.threads
    )
    payloads = [json_payload({"model": args.model, "texts": [t]}) for t in texts]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    print("served endpoint:", flush=True)
    info, served = serve_and_sweep(
        repository, args.model, ROUTE, payloads, concurrencies, args.served_seconds
    )
    print("baseline server (PyTorch eager, one request per forward):", flush=True)
    port = free_port()
    with server(
        [
            sys.executable,
            str(ROOT / "benchmarks/baselines/eager_text_server.py"),
            str(model_dir),
            "--port",
            str(port),
        ],
        port,
    ) as base:
        baseline = closed_loop_sweep(
            base, ROUTE, payloads, [c for c in concurrencies if c <= 32], args.served_seconds, "baseline "
        )

    def eng(name: str, bs: int) -> float:
        return next(e["seq_per_s"] for e in engines if e["engine"] == name and e["batch"] == bs)

    def at(rows: list[dict], c: int) -> dict:
        return next((r for r in rows if r["load"] == c), rows[-1])

    c64 = at(served, 64)
    report = {
        "model": args.model,
        "served_variant": info["variant"],
        "served_accuracy": manifest.variants[info["variant"]].metrics["accuracy"],
        "machine": machine_info(),
        "config": vars(args),
        "engines": engines,
        "served": served,
        "baseline": baseline,
        "ratios": {
            "int8_vs_eager_b32": eng("onnxruntime_int8", 32) / eng("pytorch_eager", 32),
            "fp32_vs_eager_b32": eng("onnxruntime_fp32", 32) / eng("pytorch_eager", 32),
            "int8_size_vs_fp32": manifest.files["model.int8.onnx"].bytes / manifest.files["model.onnx"].bytes,
            "served_c64_vs_int8_b32": c64["throughput_rps"] / eng("onnxruntime_int8", 32),
            "served_vs_baseline_c32": at(served, 32)["throughput_rps"] / at(baseline, 32)["throughput_rps"],
            "non_2xx_total": sum(s["errors"] for s in served if s["load"] <= 64),
        },
    }
    write_report(report)


if __name__ == "__main__":
    main()
