"""tuneserve against the servers a team could pick instead, on the same exported model, in one run:

- tuneserve: its v1 route (`/v1/text/classify` or `/v1/image/classify`), its own batcher;
- LitServe: its dynamic batching (`max_batch_size` 64, `batch_timeout` 2 ms), one worker;
- Ray Serve: one replica behind `@serve.batch` (64, 2 ms), FastAPI ingress;
- FastAPI: a plain app on uvicorn, one ONNX Runtime call per request, no batching.

Every peer runs the same task code as tuneserve (benchmarks/peers/common.py: tokenise or decode, one
ONNX Runtime call per batch, softmax, labels), so what is compared is the serving around it. Each
request carries one item: a short text as JSON, or one JPEG as a multipart upload (decoded in the
server). The load generator is tuneserve's closed loop (serving/loadtest), the same for everyone,
on the same machine. Servers run one at a time, `--rounds` alternating sweeps; each server's best
step per concurrency counts. The server's CPU per request is every process of its session (Ray's
whole cluster included) over the step.

The peers need the `bench` extra, kept out of the project's own environment (`make bench-peers`
makes `.venv-bench`). Writes benchmarks/results/peers[_image].{json,md}.

    python benchmarks/peers/run.py --model intent --peer-python .venv-bench/bin/python
    python benchmarks/peers/run.py --model surface-defects --peer-python .venv-bench/bin/python
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.harness import (
    ROOT,
    cpu_measured_step,
    free_port,
    machine_info,
    server,
    tuneserve_server,
    write_results,
)
from serving.loadtest.engine import closed_loop, run
from serving.loadtest.payloads import Payload, builtin_payloads, json_payload
from serving.manifest import load_manifest

PEERS = {
    "LitServe": "litserve_server.py",
    "Ray Serve": "rayserve_server.py",
    "FastAPI (no batching)": "fastapi_server.py",
}


def version(python: str, package: str) -> str:
    out = subprocess.run(
        [python, "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "not installed"


def payloads_for(modality: str, model: str) -> tuple[str, list[Payload], list[Payload]]:
    """(tuneserve's route, its payloads, the peers' payloads): the same items either way."""
    if modality == "image":
        ours = builtin_payloads("/v1/image/classify", model)
        theirs = [Payload(files=p.files, file_field="images") for p in ours]
        return "/v1/image/classify", ours, theirs
    import json

    texts = [
        json.loads(p.json_body or b"{}")["texts"][0] for p in builtin_payloads("/v1/text/classify", None)
    ]
    return (
        "/v1/text/classify",
        [json_payload({"model": model, "texts": [t]}) for t in texts],
        [json_payload({"texts": [t]}) for t in texts],
    )


def sweep(base: str, route: str, payloads: list[Payload], levels: list[int], seconds: float, session: int, label: str) -> list[dict]:  # fmt: skip
    rows = []
    run(closed_loop(base + route, payloads, max(levels), 2.0, warmup_s=1.0))  # warm every path
    for c in levels:
        row = cpu_measured_step(base, route, payloads, c, seconds, session)
        print(
            f"  {label:22} c={c:3}: {row['req_s']:7.1f} req/s  p50 {row['p50_ms'] or 0:.1f} p99 {row['p99_ms'] or 0:.1f} ms  "
            f"{row['server_cpu_ms_per_request']:.2f} ms CPU/req  errors {row['errors']}",
            flush=True,
        )
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--model", default="intent")
    ap.add_argument("--concurrency", default="16,64")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--peer-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--only", help="comma-separated subset of the servers (default: all)")
    args = ap.parse_args()
    repository = Path(args.repository).resolve()
    manifest = load_manifest(repository / args.model)
    modality = manifest.modality
    route, ours, theirs = payloads_for(modality, args.model)
    levels = [int(c) for c in args.concurrency.split(",")]
    common_env = {
        "TUNESERVE_REPOSITORY": str(repository),
        "TUNESERVE_MODELS": args.model,
        "PYTHONPATH": str(ROOT),
    }

    def ours_server() -> tuple[list[str], int, dict[str, str], str, str, list[Payload]]:
        argv, port, env = tuneserve_server(repository)
        return argv, port, {**env, **common_env}, "/readyz", route, ours

    def peer(script: str):
        def make() -> tuple[list[str], int, dict[str, str], str, str, list[Payload]]:
            port = free_port()
            env = {**common_env, "RAY_ADDRESS": "", "TMPDIR": tempfile.mkdtemp(prefix="peer-")}
            argv = [args.peer_python, str(Path(__file__).with_name(script)), str(port)]
            return argv, port, env, "/health", "/predict", theirs

        return make

    servers = {"tuneserve": ours_server, **{name: peer(script) for name, script in PEERS.items()}}
    if args.only:
        wanted = {w.strip() for w in args.only.split(",")}
        servers = {name: make for name, make in servers.items() if name in wanted}
    results: dict[str, list[list[dict]]] = {name: [] for name in servers}
    for round_ in range(args.rounds):
        for name, make in servers.items():
            argv, port, env, ready, path, payloads = make()
            started: list[subprocess.Popen] = []
            print(f"round {round_ + 1}: {name}", flush=True)
            with server(argv, port, env=env, ready_path=ready, timeout_s=300, started=started) as base:
                results[name].append(sweep(base, path, payloads, levels, args.seconds, started[0].pid, name))

    best = {
        name: [max((s[i] for s in sweeps), key=lambda r: r["req_s"]) for i in range(len(levels))]
        for name, sweeps in results.items()
    }
    peers = [name for name in best if name != "tuneserve"]
    what = "one short text as JSON" if modality == "text" else "one JPEG as a multipart upload"
    lines = [
        f"# tuneserve and its peers — `{args.model}` ({modality})",
        "",
        f"{os.cpu_count()} cores, one worker or replica each, {what} per request, closed loop "
        f"(tuneserve's load generator on the same machine), {args.seconds:g} s per step, best of "
        f"{args.rounds} alternating rounds. Versions: "
        + ", ".join(f"{p} {version(args.peer_python, p)}" for p in ("litserve", "ray", "fastapi", "uvicorn"))
        + ".",
        "",
        "| server | concurrency | req/s | p50 ms | p99 ms | errors | server CPU ms/request | tuneserve ÷ this |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in best.items():
        for i, row in enumerate(rows):
            mine = best["tuneserve"][i]["req_s"] if "tuneserve" in best else row["req_s"]
            lines.append(
                f"| {name} | {row['concurrency']} | {row['req_s']:.1f} | {row['p50_ms'] or 0:.1f} | "
                f"{row['p99_ms'] or 0:.1f} | {row['errors']} | {row['server_cpu_ms_per_request']:.2f} | "
                f"{mine / row['req_s']:.2f}× |"
                if row["req_s"]
                else f"| {name} | {row['concurrency']} | 0 | - | - | {row['errors']} | - | - |"
            )
    if "tuneserve" in best and peers:
        lines.append("")
        for i, c in enumerate(levels):
            top = max(peers, key=lambda p: best[p][i]["req_s"])
            ours_row, theirs_row = best["tuneserve"][i], best[top][i]
            lines.append(
                f"- c={c}: tuneserve {ours_row['req_s']:.0f} req/s, the best peer ({top}) "
                f"{theirs_row['req_s']:.0f}: **{ours_row['req_s'] / max(theirs_row['req_s'], 1e-9):.2f}×** "
                f"(target ≥ 1.5×); p99 {ours_row['p99_ms'] or 0:.0f} vs {theirs_row['p99_ms'] or 0:.0f} ms"
            )
    report = {
        "model": args.model,
        "modality": modality,
        "concurrency": levels,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "machine": machine_info(),
        "versions": {p: version(args.peer_python, p) for p in ("litserve", "ray", "fastapi", "uvicorn")},
        "best": best,
        "rounds_raw": results,
    }
    write_results("peers" if modality == "text" else f"peers_{modality}", report, lines + [""])
    return 0


if __name__ == "__main__":
    sys.exit(main())
