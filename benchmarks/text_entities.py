"""Entity extraction vs classification on the same MiniLM backbone, one server, one run:
`POST /v1/text/entities` (model `entities`) and `POST /v1/text/classify` (model `intent`) under the
same closed-loop load with the same customer-service texts.

Writes benchmarks/results/text_entities.{json,md}. Target: entities req/s at concurrency 32 within
20% of classify. Run: `make bench` or `python benchmarks/text_entities.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import closed_loop_sweep, server, tuneserve_server, write_results
from serving.loadtest.payloads import builtin_payloads
from serving.manifest import load_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--served-seconds", type=float, default=10.0)
    args = ap.parse_args()
    repository = Path(args.repository)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    # the same texts for both routes: the entity sample sentences
    payloads = {
        "entities": builtin_payloads("text/entities", "entities"),
        "intent": builtin_payloads("text/entities", "intent"),
    }
    routes = {"entities": "/v1/text/entities", "intent": "/v1/text/classify"}
    argv, port, env = tuneserve_server(repository)
    results, variants = {}, {}
    with server(argv, port, env) as base:
        models = {m["name"]: m for m in httpx.get(base + "/v1/models").json()["models"]}
        for name in ("intent", "entities"):
            variants[name] = models[name]["variant"]
            results[name] = closed_loop_sweep(
                base, routes[name], payloads[name], concurrencies, args.served_seconds, f"{name:8}"
            )

    def at(rows: list[dict], c: int) -> dict:
        return next((r for r in rows if r["load"] == c), rows[-1])

    ratio = at(results["entities"], 32)["throughput_rps"] / at(results["intent"], 32)["throughput_rps"]
    manifest = load_manifest(repository / "entities")
    served = manifest.variants[variants["entities"]].metrics
    report = {
        "cores": os.cpu_count(),
        "variants": variants,
        "served": results,
        "entities_vs_classify_c32": ratio,
        "entities_test": served,
    }
    lines = [
        "# Entities vs classification — same backbone, same server, same texts",
        "",
        f"{os.cpu_count()} cores; `intent` serves {variants['intent']}, `entities` serves {variants['entities']}; one text per request, closed loop.",
        "",
        "| route | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | server mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {routes[name]} | {s['load']:g} | {s['throughput_rps']:.1f} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | {s['errors']} | {s['server'].get('mean_batch_size', 0):.1f} |"
            for name in ("intent", "entities")
            for s in results[name]
        ],
        "",
        f"- entities req/s at concurrency 32 = **{ratio * 100:.0f}%** of classify (target ≥ 80%)",
        f"- `entities` test micro-F1 (served variant): **{served['micro_f1']:.4f}**; per type: "
        + ", ".join(f"{k[3:]} {v:.3f}" for k, v in served.items() if k.startswith("f1_")),
        "",
    ]
    write_results("text_entities", report, lines)


if __name__ == "__main__":
    main()
