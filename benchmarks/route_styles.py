"""How the text route is served, compared in one run on the same `intent` model and the same texts:

1. tuneserve: the generic v1 route of the task registry (serving/protocols/v1.py), per-model batcher;
   and the same model over the Open Inference Protocol, REST with binary tensors (serving/protocols/v2.py)
   and gRPC (serving/protocols/grpc_v2.py);
2. BentoML-native: a `@bentoml.api(batchable=True)` method calling the same task's `run`, batched by
   BentoML's own adaptive batcher (benchmarks/baselines/batchable_text_service.py);
3. optionally `--reference REF`: tuneserve as of another git commit (e.g. before the registry), from
   a temporary worktree, serving the same repository.

Servers run one at a time, each swept twice in alternation (ABAB) so drift on a shared machine falls
on both; each server's best sweep counts. Writes benchmarks/results/route_styles.{json,md}.

    python benchmarks/route_styles.py --repository exported --reference 72c2386
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import ROOT, closed_loop_sweep, free_port, server, tuneserve_server, write_results
from serving.loadtest.engine import StepStats
from serving.loadtest.payloads import builtin_payloads, json_payload, v2_payloads


async def grpc_closed_loop(
    target: str, model: str, texts: list[str], concurrency: int, seconds: float, warmup_s: float = 1.0
) -> StepStats:
    """`concurrency` users calling ModelInfer one text at a time (raw_input_contents, as
    tritonclient sends), measured like the HTTP loops (serving/loadtest/engine.py)."""
    import grpc

    from serving.protocols import grpc_predict_v2_pb2 as pb
    from serving.protocols import grpc_predict_v2_pb2_grpc as pb_grpc
    from serving.protocols.tensors import encode_binary

    requests = []
    for text in texts:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="texts", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(encode_binary([text], "BYTES"))
        requests.append(request)
    stats = StepStats("closed", concurrency)
    rotation = itertools.cycle(requests)
    async with grpc.aio.insecure_channel(target) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        start = time.perf_counter()
        measure_from, stop_at = start + warmup_s, start + warmup_s + seconds

        async def user() -> None:
            while (sent := time.perf_counter()) < stop_at:
                try:
                    await infer(next(rotation), timeout=30)
                    status, error = 200, None
                except grpc.aio.AioRpcError as exc:
                    status, error = None, exc.code().name
                if sent >= measure_from:
                    stats.sent += 1
                    stats.record(time.perf_counter() - sent, status, error)

        await asyncio.gather(*(user() for _ in range(concurrency)))
    stats.duration_s = min(time.perf_counter(), stop_at) - measure_from
    return stats


def grpc_sweep(
    target: str, model: str, texts: list[str], concurrencies: list[int], seconds: float, label: str
) -> list[dict]:
    rows = []
    for c in concurrencies:
        row = asyncio.run(grpc_closed_loop(target, model, texts, c, seconds)).summary()
        rows.append(row)
        print(
            f"  {label} c={c:3}: {row['throughput_rps']:7.1f} req/s  p50 {row['p50_ms']:.1f} p95 {row['p95_ms']:.1f} p99 {row['p99_ms']:.1f} ms"
            f"  errors {row['errors']}",
            flush=True,
        )
    return rows


def batchable_server(repository: Path, model: str) -> tuple[list[str], int, dict[str, str]]:
    port = free_port()
    argv = [
        str(Path(sys.executable).with_name("bentoml")),
        "serve",
        "benchmarks.baselines.batchable_text_service:BatchableText",
        "--port",
        str(port),
    ]
    return (
        argv,
        port,
        {
            "TUNESERVE_REPOSITORY": str(repository),
            "TUNESERVE_MODELS": model,
            "BENTOML_HOME": tempfile.mkdtemp(prefix="batchable-bentoml-home-"),
        },
    )


def reference_server(
    ref: str, repository: Path, workdir: Path
) -> tuple[list[str], int, dict[str, str], Path]:
    tree = workdir / f"ref-{ref}"
    if not tree.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), ref], cwd=ROOT, check=True, capture_output=True
        )
    argv, port, env = tuneserve_server(repository)
    return argv, port, env, tree


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--model", default="intent")
    ap.add_argument("--concurrency", default="8,32,64")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--reference", help="a git commit of tuneserve to serve the same model with, for comparison"
    )
    ap.add_argument("--variant", help="serve this variant of the model in every server (e.g. int8)")
    ap.add_argument(
        "--only", help="comma-separated subset of: v1, v2, grpc, batchable, reference (default: all)"
    )
    args = ap.parse_args()
    if args.variant:
        os.environ["TUNESERVE_VARIANT"] = args.variant
    repository = Path(args.repository).resolve()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    texts = [json.loads(p.json_body)["texts"][0] for p in builtin_payloads("text/classify", None)]
    v1 = [json_payload({"model": args.model, "texts": [t]}) for t in texts]
    native = [json_payload({"texts": [t]}) for t in texts]

    workdir = Path(tempfile.mkdtemp(prefix="route-styles-"))
    v2_route, v2 = v2_payloads("text/classify", args.model)
    grpc_port = free_port()

    def grpc_server() -> tuple[list[str], int, dict[str, str]]:
        argv, port, env = tuneserve_server(repository)
        return argv, port, {**env, "TUNESERVE_GRPC_PORT": str(grpc_port)}

    contenders = {
        "tuneserve v1 route": (lambda: tuneserve_server(repository), ROOT, "/v1/text/classify", v1),
        "tuneserve v2 (binary tensors)": (lambda: tuneserve_server(repository), ROOT, v2_route, v2),
        "tuneserve v2 gRPC": (grpc_server, ROOT, "grpc", texts),
        "BentoML batchable @api": (
            lambda: batchable_server(repository, args.model),
            ROOT,
            "/classify",
            native,
        ),
    }
    if args.reference:

        def ref() -> tuple[list[str], int, dict[str, str]]:
            argv, port, env, _ = reference_server(args.reference, repository, workdir)
            return argv, port, env

        contenders[f"tuneserve @ {args.reference}"] = (
            ref,
            workdir / f"ref-{args.reference}",
            "/v1/text/classify",
            v1,
        )

    if args.only:
        keys = dict(zip(["v1", "v2", "grpc", "batchable", "reference"], list(contenders) + [None] * 5))
        chosen = {keys[k.strip()] for k in args.only.split(",") if keys.get(k.strip())}
        contenders = {name: c for name, c in contenders.items() if name in chosen}
    results: dict[str, list[list[dict]]] = {name: [] for name in contenders}
    for round_ in range(args.rounds):
        for name, (make, cwd, route, payloads) in contenders.items():
            argv, port, env = make()
            print(f"round {round_ + 1}: {name}", flush=True)
            with server(argv, port, env={**env, "PYTHONPATH": str(cwd)}, cwd=cwd) as base:
                if route == "grpc":
                    results[name].append(
                        grpc_sweep(
                            f"127.0.0.1:{grpc_port}", args.model, payloads, concurrencies, args.seconds, name
                        )
                    )
                else:
                    results[name].append(
                        closed_loop_sweep(base, route, payloads, concurrencies, args.seconds, name)
                    )
    if args.reference:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(workdir / f"ref-{args.reference}")],
            cwd=ROOT,
            capture_output=True,
        )

    best = {
        name: [
            max((sweep[i] for sweep in sweeps), key=lambda r: r["throughput_rps"])
            for i in range(len(concurrencies))
        ]
        for name, sweeps in results.items()
    }
    ours = best.get("tuneserve v1 route") or next(iter(best.values()))
    lines = [
        f"# Route styles — the `{args.model}` text route served {len(best)} ways",
        "",
        f"{os.cpu_count()} cores, one worker each, one text per request, closed loop, {args.seconds:g} s per step, "
        f"best of {args.rounds} alternating sweeps per server; variant {args.variant or 'the manifest default'}.",
        "",
        "| server | concurrency | req/s | p50 ms | p99 ms | errors | vs tuneserve v1 route |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in best.items():
        for c, row, mine in zip(concurrencies, rows, ours):
            lines.append(
                f"| {name} | {c} | {row['throughput_rps']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} | "
                f"{row['throughput_rps'] / mine['throughput_rps']:.3f} |"
            )
    report = {
        "model": args.model,
        "variant": args.variant,
        "repository": str(repository),
        "concurrency": concurrencies,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "reference": args.reference,
        "best": best,
        "sweeps": results,
    }
    write_results(
        "route_styles" if not args.only else "route_styles_" + args.only.replace(",", "_"), report, lines
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
