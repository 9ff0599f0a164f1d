"""The request path's own cost: the server's CPU time per request, per route, for the same models and
payloads served three ways in one run:

1. `bento default`: tuneserve as of `--reference` (the commit before the lean path) on the stack a
   Bento installed then: uvicorn's pure-Python h11 parser and asyncio's event loop (BentoML requires
   neither httptools nor uvloop), answers written by the standard library's json;
2. `h11 + asyncio`: this checkout on that same stack (httptools and uvloop hidden from the server);
3. `lean`: this checkout as it installs now: httptools, uvloop, orjson.

Each route is driven by a closed loop at `--concurrency`, one item per request; the server's CPU
seconds (every process of its session, from /proc) are read around each step. Servers run one at a
time, swept `--rounds` times in alternation; each server's best step counts (its CPU per request is
the one of that step). Writes benchmarks/results/lean_path.{json,md}. Linux only.

    python benchmarks/lean_path.py --reference b31015a
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    ROOT,
    cpu_measured_step,
    machine_info,
    server,
    tuneserve_server,
    write_results,
)
from serving.loadtest.engine import closed_loop, run
from serving.loadtest.payloads import builtin_payloads

# route → the model the step asks for (each must be in the repository)
ROUTES = {
    "/v1/text/classify": "intent",
    "/v1/tabular/predict": "credit-risk",
    "/v1/image/segment": "defect-segmentation",
}

BLOCKER = "import sys\nsys.modules['httptools'] = None\nsys.modules['uvloop'] = None\n"


def step(base: str, route: str, model: str, concurrency: int, seconds: float, root: int) -> dict:
    payloads = builtin_payloads(route, model)
    run(closed_loop(base + route, payloads, concurrency, 1.0, warmup_s=0.5))  # warm every path
    return {
        "route": route,
        "model": model,
        **cpu_measured_step(base, route, payloads, concurrency, seconds, root),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--reference", required=True, help="the git commit served as `bento default`")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--routes", default=",".join(ROUTES), help="comma-separated subset of the routes")
    args = ap.parse_args()
    repository = Path(args.repository).resolve()
    routes = {r: ROUTES[r] for r in args.routes.split(",")}
    work = Path(tempfile.mkdtemp(prefix="lean-path-"))
    blocker = work / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    reference = work / "reference"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(reference), args.reference],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    servers = {
        "bento default": (reference, f"{blocker}:{reference}"),
        "h11 + asyncio": (ROOT, f"{blocker}:{ROOT}"),
        "lean": (ROOT, str(ROOT)),
    }
    models = ",".join(sorted(set(routes.values())))
    results: dict[str, list[list[dict]]] = {name: [] for name in servers}
    try:
        for round_ in range(args.rounds):
            for name, (cwd, path) in servers.items():
                argv, port, env = tuneserve_server(repository)
                started: list[subprocess.Popen] = []
                env = {**env, "PYTHONPATH": path, "TUNESERVE_MODELS": models}
                with server(argv, port, env=env, cwd=cwd, started=started) as base:
                    rows = []
                    for route, model in routes.items():
                        row = step(base, route, model, args.concurrency, args.seconds, started[0].pid)
                        print(
                            f"round {round_ + 1} {name:14} {route:22} {row['req_s']:7.1f} req/s "
                            f"p99 {row['p99_ms']:6.1f} ms  {row['server_cpu_ms_per_request']:.2f} ms CPU/req "
                            f"({row['server_cores']:.2f} cores) errors {row['errors']}",
                            flush=True,
                        )
                        rows.append(row)
                    results[name].append(rows)
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(reference)], cwd=ROOT, capture_output=True
        )

    best = {
        name: [max((sweep[i] for sweep in sweeps), key=lambda r: r["req_s"]) for i in range(len(routes))]
        for name, sweeps in results.items()
    }
    base_rows = best["bento default"]
    lines = [
        "# Lean request path — the server's CPU per request, per route",
        "",
        f"{os.cpu_count()} cores, one worker, closed loop at concurrency {args.concurrency}, one item per "
        f"request, {args.seconds:g} s per step, best of {args.rounds} alternating rounds; `bento default` is "
        f"tuneserve @ {args.reference} on h11 + asyncio + stdlib json. CPU is every process of the server "
        "(event loop, pre-processing, ONNX Runtime).",
        "",
        "| server | route | model | req/s | p50 ms | p99 ms | errors | server CPU ms/request | vs bento default |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in best.items():
        for row, ref in zip(rows, base_rows):
            lines.append(
                f"| {name} | `{row['route']}` | {row['model']} | {row['req_s']:.1f} | {row['p50_ms']:.1f} | "
                f"{row['p99_ms']:.1f} | {row['errors']} | {row['server_cpu_ms_per_request']:.2f} | "
                f"{row['server_cpu_ms_per_request'] / ref['server_cpu_ms_per_request']:.2f}× CPU, "
                f"{row['req_s'] / ref['req_s']:.2f}× req/s |"
            )
    report = {
        "reference": args.reference,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "machine": machine_info(),
        "best": best,
        "rounds_raw": results,
    }
    write_results("lean_path", report, lines + [""])
    return 0


if __name__ == "__main__":
    sys.exit(main())
