"""The GPU check: does every model of a repository answer on the GPU as it does on the CPU, and how
much faster is it, per ONNX Runtime provider (CPU, CUDA, TensorRT)?

1. Engines, in this process: each model's session on each provider (the variant that provider's
   device serves: `default_variant`'s `gpu` or `cpu`), opened as the server opens it
   (serving/runtime.py `open_variant`: TensorRT gets float16 kernels only for an fp16 variant, its
   engine profile and cache in TUNESERVE_CACHE). Items/s at a few batch sizes on synthetic inputs of
   the model's signature; on GPU providers both `session.run` and the I/O-bound run the server uses;
   the first run's time (TensorRT builds its engine then, unless cached); the largest output
   difference from fp32 on the CPU on the same batch.
2. Served: real servers on local ports, `TUNESERVE_DEVICE` = cpu with every model's fp32 (the
   reference answers), cpu with the fp16 variants (float16 storage alone), cpu, cuda and auto
   (TensorRT first). Each model answers the same requests (its task's samples; tables get rows
   drawn from the model's own feature schema) on each server; its answers are compared with the
   reference's (labels; entity spans; the top search hit; forecasts and regression values within
   1% of their scale; embeddings by cosine). What GPUs serve (answers from a GPU provider, and fp16
   variants that are a manifest's GPU default) passes at `--min-agreement` (99.5%) of items. Then
   each model is loaded at `--concurrency` for `--served-seconds`: requests/s and latency per
   server.

Writes benchmarks/results/gpu.{json,md} (`--out`). Exits 1 when what GPUs serve falls below the
agreement floor or a server does not start.

On a machine without a GPU, `--providers CPUExecutionProvider` runs everything but the GPU
providers (the auto server then serves on the CPU and reports why), which is how the script itself
is checked. benchmarks/gpu_check.sh installs what it needs and runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import closed_loop_sweep, free_port, timed
from serving.loadtest.payloads import from_sample
from serving.loadtest.ready import wait_ready
from serving.manifest import MANIFEST_FILE, Manifest, load_manifest
from serving.runtime import open_variant
from serving.sessions import CPU, PROVIDER_ORDER, BoundSession
from serving.settings import Settings
from serving.tasks import TASKS, Sample

TRT, CUDA = PROVIDER_ORDER[0], PROVIDER_ORDER[1]
# Which TUNESERVE_DEVICE serves on which provider first.
SERVERS = {CPU: "cpu", CUDA: "cuda", TRT: "auto"}
SHORT = {TRT: "TensorRT", CUDA: "CUDA", CPU: "CPU"}


# --- inputs --------------------------------------------------------------------------------------


def synthetic_feeds(manifest: Manifest, batch: int, sequence: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of the model's inputs with the right names, dtypes and shapes (values do not change
    the time these models take): `batch` and `sequence` axes as given, token ids of ordinary words,
    masks of ones, codes 0 (the `<unknown>` category), floats from a standard normal."""
    rng = np.random.default_rng(seed)
    axes = {
        "batch": batch,
        "sequence": min(sequence, int(manifest.preprocessing.get("max_length", sequence))),
    }
    feeds = {}
    for spec in manifest.signature.inputs:
        shape = [d if isinstance(d, int) else axes[d] for d in spec.shape]
        if spec.dtype == "float32":
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
        elif "mask" in spec.name:
            feeds[spec.name] = np.ones(shape, dtype=spec.dtype)
        elif "ids" in spec.name:
            feeds[spec.name] = rng.integers(1000, 2000, shape).astype(spec.dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def table_rows(manifest: Manifest, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows in the model's own feature schema: numbers within each feature's training range,
    categories from its vocabulary (not `<unknown>`), booleans at random."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        row: dict[str, Any] = {}
        for f in manifest.preprocessing["features"]:
            if f["kind"] == "numeric":
                low = f["low"] if f.get("low") is not None else f["mean"] - 2 * f["std"]
                high = f["high"] if f.get("high") is not None else f["mean"] + 2 * f["std"]
                row[f["name"]] = round(float(rng.uniform(low, high)), 4)
            elif f["kind"] == "categorical":
                row[f["name"]] = str(rng.choice(f["vocabulary"][1:] or f["vocabulary"]))
            else:
                row[f["name"]] = bool(rng.integers(0, 2))
        rows.append(row)
    return rows


def requests_for(manifest: Manifest, count: int) -> list[Sample]:
    """The requests every server answers for this model."""
    task = TASKS[manifest.task]
    if manifest.task == "tabular-classification":
        return [Sample(json={"model": manifest.name, "rows": [row]}) for row in table_rows(manifest, count)]
    return task.samples(count, manifest.name)


# --- answers -------------------------------------------------------------------------------------


def answer_items(body: dict[str, Any]) -> list[Any]:
    """One comparable value per input of a response: a label; an entity list as (label, start, end)
    spans; a search result list by its top hit's id; numbers (forecasts, regression values,
    embeddings) as float arrays, compared by `agrees`."""
    if "forecast" in body:
        return [np.asarray(body["forecast"], dtype=np.float64)]
    if "embeddings" in body:
        return [np.asarray(e, dtype=np.float64) for e in body["embeddings"]]
    items: list[Any] = []
    for p in body["predictions"]:
        if isinstance(p, list):
            if p and "id" in p[0]:
                items.append(p[0]["id"])
            else:
                items.append(tuple((s["label"], s["start"], s["end"]) for s in p))
        elif "label" in p:
            items.append(p["label"])
        elif "value" in p:
            items.append(np.asarray([p["value"]], dtype=np.float64))
        else:
            items.append(json.dumps(p, sort_keys=True))
    return items


def agrees(reference: Any, candidate: Any) -> bool:
    if isinstance(reference, np.ndarray):
        if not isinstance(candidate, np.ndarray) or reference.shape != candidate.shape:
            return False
        if reference.ndim == 1 and reference.size > 1 and abs(np.linalg.norm(reference) - 1) < 1e-3:
            return float(reference @ candidate) >= 0.999  # unit embeddings: cosine
        scale = float(np.abs(reference).max()) or 1.0
        return bool(np.abs(reference - candidate).max() <= 0.01 * scale)
    return reference == candidate


def post(client: httpx.Client, route: str, sample: Sample, file_field: str | None) -> dict[str, Any]:
    if sample.json is not None:
        response = client.post(route, json=sample.json)
    else:
        response = client.post(
            route,
            files=[(file_field or "files", (name, data, kind)) for name, data, kind in sample.files],
            data=dict(sample.fields),
        )
    response.raise_for_status()
    return response.json()


# --- engines -------------------------------------------------------------------------------------


def engine_rows(
    directory: Path, manifest: Manifest, providers: list[str], settings: Settings, args
) -> list[dict[str, Any]]:
    """Items/s of the model on each provider, and how far each one's outputs are from fp32 on the CPU."""
    reference, _ = open_variant(directory, manifest, "fp32", settings, [CPU])
    rows = []
    for provider in providers:
        device = "cpu" if provider == CPU else "gpu"
        variant = manifest.variant_for(device)
        chain = [CPU] if provider == CPU else [provider, CPU]
        started = time.perf_counter()
        session, info = open_variant(directory, manifest, variant, settings, chain)
        opened_s = time.perf_counter() - started
        base = {"model": manifest.name, "provider": provider, "variant": variant}
        if info.provider != provider:
            rows.append({**base, "error": "; ".join(info.fallbacks) or "did not initialise"})
            print(
                f"  {manifest.name:18} {SHORT[provider]:8} not available: {rows[-1]['error'][:160]}",
                flush=True,
            )
            continue
        limit = settings.batch_limit(manifest.modality, device)
        runs = (
            {"io_binding": session.run, "run": session.session.run}
            if isinstance(session, BoundSession)
            else {"run": session.run}
        )
        first_s = None
        for batch in sorted({min(b, limit) for b in args.batches}):
            feeds = synthetic_feeds(manifest, batch, args.sequence)
            expected = reference.run(None, feeds)[0]
            if first_s is None:
                started = time.perf_counter()
                session.run(None, feeds)
                first_s = time.perf_counter() - started
            got = session.run(None, feeds)[0]
            diff = float(np.abs(expected.astype(np.float64) - got).max())
            scores = expected.ndim == 2 and expected.shape[-1] == len(manifest.labels)  # a classifier's
            same = bool((expected.argmax(-1) == got.argmax(-1)).all()) if scores else None
            for style, run in runs.items():
                sec = timed(lambda run=run, feeds=feeds: run(None, feeds), args.engine_seconds)
                rows.append(
                    {
                        **base,
                        "call": style,
                        "batch": batch,
                        "ms_per_batch": sec * 1000,
                        "items_per_s": batch / sec,
                        "max_abs_diff_vs_cpu_fp32": diff,
                        "argmax_equal_vs_cpu_fp32": same,
                        "session_s": opened_s,
                        "first_run_s": first_s,
                    }
                )
                print(
                    f"  {manifest.name:18} {SHORT[provider]:8} {variant:5} {style:10} batch {batch:3}: "
                    f"{batch / sec:9.1f} items/s  max |Δ| vs CPU fp32 {diff:.1e}",
                    flush=True,
                )
        del session
    return rows


# --- servers -------------------------------------------------------------------------------------


@contextmanager
def tuneserve(repository: Path, env: dict[str, str], log_path: Path, timeout_s: float) -> Iterator[str]:
    """`bentoml serve` on a free local port, its output in `log_path`; stopped on exit."""
    port = free_port()
    argv = [str(Path(sys.executable).with_name("bentoml")), "serve", "serving.service:TuneServe"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    home = tempfile.mkdtemp(prefix="tuneserve-bentoml-home-")  # BentoML's metrics files, per server
    full_env = {**os.environ, "TUNESERVE_REPOSITORY": str(repository), "BENTOML_HOME": home, **env}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/readyz", proc, timeout_s, log_path=log_path)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def served(
    name: str,
    env: dict[str, str],
    manifests: dict[str, Manifest],
    requests: dict[str, list[Sample]],
    args,
    sweep: bool,
) -> dict[str, Any]:
    """One server: what each model is served on, its answers to `requests`, and (with `sweep`) its
    closed-loop throughput."""
    log_path = Path(args.logs) / f"server_{name}.log"
    print(f"server {name} ({' '.join(f'{k}={v}' for k, v in env.items())}); log {log_path}", flush=True)
    started = time.perf_counter()
    out: dict[str, Any] = {"env": env, "models": {}}
    with tuneserve(Path(args.repository), env, log_path, args.ready_timeout) as base:
        out["ready_s"] = time.perf_counter() - started
        listed = {m["name"]: m for m in httpx.get(base + "/v1/models").json()["models"]}
        with httpx.Client(base_url=base, timeout=120) as client:
            for model, manifest in manifests.items():
                task = TASKS[manifest.task]
                info = listed[model]
                row: dict[str, Any] = {
                    "variant": info["variant"],
                    "provider": info["provider"],
                    "provider_fallbacks": info.get("provider_fallbacks", []),
                }
                answers = [
                    answer_items(post(client, f"/v1{task.route}", s, task.file_field))
                    for s in requests[model]
                ]
                row["answers"] = answers
                if sweep:
                    payloads = [from_sample(s, task.file_field or "") for s in requests[model]]
                    (row["load"],) = closed_loop_sweep(
                        base,
                        f"/v1{task.route}",
                        payloads,
                        [args.concurrency],
                        args.served_seconds,
                        f"{name:9} {model:18}",
                    )
                out["models"][model] = row
    return out


def agreement(reference: list[list[Any]], candidate: list[list[Any]]) -> tuple[int, int]:
    pairs = [(r, c) for rs, cs in zip(reference, candidate) for r, c in zip(rs, cs)]
    missing = sum(abs(len(rs) - len(cs)) for rs, cs in zip(reference, candidate))
    return sum(agrees(r, c) for r, c in pairs), len(pairs) + missing


# --- report --------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> list[str]:
    env = report["environment"]
    lines = [
        "# GPU check",
        "",
        f"{env['gpu'] or 'no GPU'}; {env['cpu_count']} cores; ONNX Runtime {env['onnxruntime']} "
        f"(providers offered: {', '.join(env['providers_offered'])}; checked: {', '.join(report['providers'])}). "
        f"Agreement with fp32 on the CPU, by items; floor {report['min_agreement']:.1%} for models served on a GPU provider and for fp16 variants that are a GPU default.",
        "",
        "## Answers",
        "",
        "| model | server | served on | variant | agreement | items | passed |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for row in report["agreement"]:
        passed = "yes" if row["passed"] else ("no" if row["passed"] is False else "n/a")
        lines.append(
            f"| {row['model']} | {row['server']} | {SHORT.get(row['provider'], row['provider'])} | {row['variant']} | "
            f"{row['agreement']:.2%} | {row['items']} | {passed} |"
        )
    # per server and provider, why it was not used: the failure itself, not the later "skipped (...)"
    fallbacks: dict[tuple[str, str], str] = {}
    for row in report["agreement"]:
        for why in row["provider_fallbacks"]:
            provider, _, detail = why.partition(": ")
            if fallbacks.get((row["server"], provider), "skipped").startswith("skipped"):
                fallbacks[row["server"], provider] = detail
    if fallbacks:
        lines += ["", "Why a server did not use a better provider:", ""]
        lines += [
            f"- {server}: {provider}" + (f": {why}" if why else "")
            for (server, provider), why in sorted(fallbacks.items())
        ]
    lines += [
        "",
        "## Engines",
        "",
        "Synthetic inputs of each model's signature; `io_binding` is the run the server uses on a GPU.",
        "",
        "| model | provider | variant | call | batch | items/s | ms/batch | max abs diff vs CPU fp32 | first run s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["engines"]:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {SHORT[r['provider']]} | {r['variant']} | not available | | | | | |"
            )
            continue
        lines.append(
            f"| {r['model']} | {SHORT[r['provider']]} | {r['variant']} | {r['call']} | {r['batch']} | "
            f"{r['items_per_s']:.1f} | {r['ms_per_batch']:.2f} | {r['max_abs_diff_vs_cpu_fp32']:.1e} | {r['first_run_s']:.2f} |"
        )
    lines += [
        "",
        "## Served",
        "",
        f"Closed loop at concurrency {report['concurrency']} for {report['served_seconds']:g} s per model and server.",
        "",
        "| model | server | served on | variant | req/s | p50 ms | p99 ms | errors | mean batch |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, server in report["servers"].items():
        for model, row in server["models"].items():
            load = row.get("load")
            if load is None:
                continue
            lines.append(
                f"| {model} | {name} | {SHORT.get(row['provider'], row['provider'])} | {row['variant']} | "
                f"{load['throughput_rps']:.1f} | {load['p50_ms'] or 0:.1f} | {load['p99_ms'] or 0:.1f} | {load['errors']} | "
                f"{load['server'].get('mean_batch_size', 0):.1f} |"
            )
    return lines + [""]


def gpu_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().replace("\n", "; ") or None


def main() -> int:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--models", default="", help="comma-separated; default: every model of the repository")
    ap.add_argument(
        "--providers",
        default=",".join(PROVIDER_ORDER),
        help="providers to check, of TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider",
    )
    ap.add_argument("--batches", default="1,8,64", type=lambda s: [int(b) for b in s.split(",")])
    ap.add_argument("--sequence", type=int, default=64, help="tokens per text in the engine inputs")
    ap.add_argument("--engine-seconds", type=float, default=1.0)
    ap.add_argument("--requests", type=int, default=200, help="requests per model for the answers")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--served-seconds", type=float, default=3.0)
    ap.add_argument("--min-agreement", type=float, default=0.995)
    ap.add_argument(
        "--ready-timeout", type=float, default=900, help="seconds for a server to load every model"
    )
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "tuneserve-gpu-check" / "cache"))
    ap.add_argument("--logs", default=str(Path(tempfile.gettempdir()) / "tuneserve-gpu-check" / "logs"))
    ap.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "gpu"), help="writes OUT.json and OUT.md"
    )
    args = ap.parse_args()

    providers = [p for p in PROVIDER_ORDER if p in args.providers.split(",")]
    repository = Path(args.repository).resolve()
    args.repository = str(repository)
    wanted = [m for m in args.models.split(",") if m]
    folders = sorted(
        p.parent for p in repository.glob(f"*/{MANIFEST_FILE}") if not wanted or p.parent.name in wanted
    )
    if not folders:
        print(f"no models in {repository}", file=sys.stderr)
        return 1
    manifests = {f.name: load_manifest(f) for f in folders}
    Path(args.logs).mkdir(parents=True, exist_ok=True)
    os.environ["TUNESERVE_CACHE"] = args.cache  # the engines the first phase builds serve the servers too
    settings = Settings(repository=repository, cache=Path(args.cache))
    env = {
        "gpu": gpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers_offered": ort.get_available_providers(),
    }
    print(
        f"{env['gpu'] or 'no GPU'}; onnxruntime {env['onnxruntime']}: {', '.join(env['providers_offered'])}",
        flush=True,
    )
    started = time.perf_counter()

    print("engines", flush=True)
    engines = [
        row
        for folder in folders
        for row in engine_rows(folder, manifests[folder.name], providers, settings, args)
    ]

    requests = {name: requests_for(m, args.requests) for name, m in manifests.items()}
    servers: dict[str, dict[str, Any]] = {}
    # server → (its environment, the models it serves, whether its throughput is measured)
    plan = {"reference": ({"TUNESERVE_DEVICE": "cpu", "TUNESERVE_VARIANT": "fp32"}, manifests, False)}
    # the fp16 variants on the CPU provider: float16 storage alone, as the build checked it; beside
    # the GPU's answers this tells storage from float16 arithmetic
    halves = {name: m for name, m in manifests.items() if "fp16" in m.variants}
    if halves:
        only = {"TUNESERVE_MODELS": ",".join(halves), "TUNESERVE_DEVICE": "cpu", "TUNESERVE_VARIANT": "fp16"}
        plan["fp16-cpu"] = (only, halves, False)
    for provider in [CPU, CUDA, TRT]:
        if provider in providers:
            plan[SERVERS[provider]] = ({"TUNESERVE_DEVICE": SERVERS[provider]}, manifests, True)
    plan.setdefault("auto", ({"TUNESERVE_DEVICE": "auto"}, manifests, True))  # what a deployment gets
    failed: list[str] = []
    for name, (server_env, models, sweep) in plan.items():
        try:
            servers[name] = served(name, server_env, models, requests, args, sweep)
        except RuntimeError as exc:
            failed.append(f"server {name}: {str(exc)[:2000]}")
            print(failed[-1], file=sys.stderr, flush=True)
    rows = []
    reference = servers.get("reference")
    for name, server in servers.items():
        if name == "reference" or reference is None:
            continue
        for model, row in server["models"].items():
            same, total = agreement(reference["models"][model]["answers"], row["answers"])
            rate = same / total if total else 0.0
            # the floor is for what GPUs serve: a GPU provider's answers, and fp16 variants that the
            # manifest serves on GPUs (on the CPU provider too, where float16 storage alone shows)
            gpu_default = manifests[model].default_variant.get("gpu")
            held = row["provider"] != CPU or row["variant"] == "fp16" == gpu_default
            rows.append(
                {
                    "model": model,
                    "server": name,
                    "provider": row["provider"],
                    "variant": row["variant"],
                    "provider_fallbacks": row["provider_fallbacks"],
                    "agreement": rate,
                    "items": total,
                    "passed": (rate >= args.min_agreement) if held else None,
                }
            )
            if held and rate < args.min_agreement:
                failed.append(f"{model} on {name} ({row['provider']}): agreement {rate:.2%}")
    for server in servers.values():
        for row in server["models"].values():
            row.pop("answers")
    report = {
        "environment": env,
        "repository": str(repository),
        "providers": providers,
        "min_agreement": args.min_agreement,
        "concurrency": args.concurrency,
        "served_seconds": args.served_seconds,
        "seconds": round(time.perf_counter() - started, 1),
        "engines": engines,
        "agreement": rows,
        "servers": servers,
        "failed": failed,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = "\n".join(markdown(report))
    out.with_suffix(".md").write_text(text)
    print(text)
    for problem in failed:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
