"""Text classification, measured side by side in one run:

1. engines on the same pre-tokenised batches: PyTorch eager, ONNX Runtime fp32 and INT8, batch 1/8/32;
2. the served endpoint (a real BentoML server on a local port) at concurrency 1/8/32/64.

Writes benchmarks/results/text_classify.{json,md}. Targets are ratios inside this one run.
Run: `make bench` (or `python benchmarks/text_classify.py --help`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving.loadtest import closed_loop  # noqa: E402
from serving.manifest import load_manifest  # noqa: E402
from serving.processing import TextPreprocessor  # noqa: E402
from serving.sessions import create_session  # noqa: E402
from training.backbones import get_backbone  # noqa: E402
from training.data.text import read_labelled_texts, resolve_source  # noqa: E402
from training.recipe import Recipe  # noqa: E402
from training.tasks import get_task  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def timed(fn, seconds: float, min_iters: int = 5) -> float:
    """Mean seconds per call over at least `min_iters` calls and `seconds` of wall time (after 2 warm-ups)."""
    fn(), fn()
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n


def engine_benchmarks(model_dir: Path, texts: list[str], batch_sizes: list[int], seconds: float, threads: int) -> list[dict]:
    manifest = load_manifest(model_dir)
    pre = TextPreprocessor.from_config(model_dir, manifest.preprocessing)
    recipe = Recipe.model_validate(manifest.recipe)
    task = get_task(manifest.task)(recipe, get_backbone(recipe.backbone))
    eager = task.build_model(manifest.labels)
    # The traced module carries the fine-tuned weights under the eager module's names (plus a few
    # non-persistent buffers, hence strict=False with a check that nothing is missing).
    missing, _ = eager.load_state_dict(torch.jit.load(str(model_dir / "model.ts")).state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"TorchScript weights lack {missing}")
    eager.eval()
    torch.set_num_threads(threads)
    sessions = {v: create_session(model_dir / manifest.variants[v].file, threads, ["CPUExecutionProvider"])[0] for v in manifest.variants}

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
        for name, fn in engines.items():
            sec = timed(fn, seconds)
            rows.append({"engine": name, "batch": bs, "ms_per_batch": sec * 1000, "seq_per_s": bs / sec})
            print(f"  {name:22} batch {bs:3}: {bs / sec:8.1f} seq/s  ({sec * 1000:.1f} ms/batch)", flush=True)
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_benchmarks(repository: Path, model: str, texts: list[str], concurrencies: list[int], seconds: float) -> tuple[list[dict], dict]:
    port = free_port()
    env = dict(os.environ, TUNESERVE_REPOSITORY=str(repository))
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("bentoml")), "serve", "serving.service:TuneServe", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(240):
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        info = next(m for m in httpx.get(base + "/v1/models").json()["models"] if m["name"] == model)
        payloads = [{"model": model, "texts": [t]} for t in texts]
        rows = []
        for c in concurrencies:
            before = _batch_counters(httpx.get(base + "/metrics").text, model)
            step = asyncio.run(closed_loop(base + "/v1/text/classify", payloads, c, seconds, warmup_s=1.0))
            after = _batch_counters(httpx.get(base + "/metrics").text, model)
            row = step.summary()
            batches = after[1] - before[1]
            row["server_mean_batch"] = (after[0] - before[0]) / batches if batches else 0.0
            rows.append(row)
            print(f"  served c={c:3}: {row['req_per_s']:7.1f} req/s  p50 {row['p50_ms']:.1f} p95 {row['p95_ms']:.1f} p99 {row['p99_ms']:.1f} ms  non-2xx {row['non_2xx']}  mean batch {row['server_mean_batch']:.1f}", flush=True)
        return rows, info
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _batch_counters(metrics: str, model: str) -> tuple[float, float]:
    values = {}
    for line in metrics.splitlines():
        for kind in ("sum", "count"):
            if line.startswith(f'tuneserve_batch_size_{kind}{{model="{model}"}}'):
                values[kind] = float(line.split()[-1])
    return values.get("sum", 0.0), values.get("count", 0.0)


def write_report(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "text_classify.json").write_text(json.dumps(report, indent=2) + "\n")
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
        *[f"| {e['engine']} | {e['batch']} | {e['seq_per_s']:.1f} | {e['ms_per_batch']:.2f} |" for e in report["engines"]],
        "",
        "## Served endpoint (`POST /v1/text/classify`, one text per request, closed loop)",
        "",
        "| concurrency | req/s | p50 ms | p95 ms | p99 ms | non-2xx | server mean batch |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {s['concurrency']} | {s['req_per_s']:.1f} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | {s['non_2xx']} | {s['server_mean_batch']:.1f} |" for s in report["served"]],
        "",
        "## Ratios",
        "",
        f"- INT8 vs PyTorch eager at batch 32: **{r['int8_vs_eager_b32']:.2f}×** (target ≥ 3×)",
        f"- INT8 model file vs fp32: **{r['int8_size_vs_fp32'] * 100:.1f}%** (target ≤ 30%)",
        f"- served req/s at concurrency 64 vs raw INT8 seq/s at batch 32: **{r['served_c64_vs_int8_b32'] * 100:.1f}%** (target ≥ 70%)",
        f"- non-2xx responses at concurrency ≤ 64: **{r['non_2xx_total']}** (target 0)",
        f"- served variant test accuracy: **{report['served_accuracy'] * 100:.2f}%** (target ≥ 95%)",
        "",
    ]
    (RESULTS / "text_classify.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--model", default="intent")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--engine-seconds", type=float, default=4.0)
    ap.add_argument("--served-seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    repository = Path(args.repository)
    model_dir = repository / args.model
    manifest = load_manifest(model_dir)
    recipe = Recipe.model_validate(manifest.recipe)
    texts = [t for t, _ in read_labelled_texts(resolve_source(recipe.data.source))]
    np.random.default_rng(0).shuffle(texts)

    print(f"engines ({args.threads} threads):", flush=True)
    engines = engine_benchmarks(model_dir, texts, [int(b) for b in args.batches.split(",")], args.engine_seconds, args.threads)
    print("served endpoint:", flush=True)
    served, info = served_benchmarks(repository, args.model, texts, [int(c) for c in args.concurrency.split(",")], args.served_seconds)

    def eng(name: str, bs: int) -> float:
        return next(e["seq_per_s"] for e in engines if e["engine"] == name and e["batch"] == bs)

    c64 = next((s for s in served if s["concurrency"] == 64), served[-1])
    report = {
        "model": args.model,
        "served_variant": info["variant"],
        "served_accuracy": manifest.variants[info["variant"]].metrics["accuracy"],
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },
        "config": vars(args),
        "engines": engines,
        "served": served,
        "ratios": {
            "int8_vs_eager_b32": eng("onnxruntime_int8", 32) / eng("pytorch_eager", 32),
            "fp32_vs_eager_b32": eng("onnxruntime_fp32", 32) / eng("pytorch_eager", 32),
            "int8_size_vs_fp32": manifest.files["model.int8.onnx"].bytes / manifest.files["model.onnx"].bytes,
            "served_c64_vs_int8_b32": c64["req_per_s"] / eng("onnxruntime_int8", 32),
            "non_2xx_total": sum(s["non_2xx"] for s in served),
        },
    }
    write_report(report)
    print((RESULTS / "text_classify.md").read_text())


if __name__ == "__main__":
    main()
