"""Is the load tester the bottleneck? Drive a trivial local endpoint (benchmarks/targets.py) and
measure the tool's own throughput and CPU (user + system time of this process / wall time).

Writes benchmarks/results/loadtest_tool.{json,md}. Target: ≥ 1,000 req/s using < 1 core.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import free_port, server, write_results
from serving.loadtest.engine import closed_loop, open_loop, run
from serving.loadtest.payloads import builtin_payloads

ROUTE = "/v1/text/classify"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(label: str, coro_factory) -> dict:
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    stats = run(coro_factory())
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    s = stats.summary()
    row = {
        "run": label,
        "ok_rps": s["throughput_rps"],
        "sent_rps": s["achieved_rps"],
        "errors": s["errors"],
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"],
        "client_cores": cpu / wall,
    }
    print(
        f"  {label:28} {row['ok_rps']:8.1f} req/s  client CPU {row['client_cores']:.2f} cores  p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} ms  errors {row['errors']}",
        flush=True,
    )
    return row


def main() -> None:
    payloads = builtin_payloads("text/classify", None)
    port = free_port()
    rows = []
    with server(
        [sys.executable, str(ROOT / "benchmarks" / "targets.py"), "trivial", "--port", str(port)], port
    ) as base:
        url = base + ROUTE
        for c in (8, 32):
            rows.append(
                measure(
                    f"closed loop, concurrency {c}",
                    lambda c=c: closed_loop(url, payloads, c, 8.0, warmup_s=1.0),
                )
            )
        for rate in (1000, 1500):
            rows.append(
                measure(
                    f"open loop, {rate} req/s Poisson",
                    lambda r=rate: open_loop(url, payloads, r, 8.0, warmup_s=1.0),
                )
            )
    best = max((r for r in rows if r["errors"] == 0), key=lambda r: r["ok_rps"])
    report = {
        "machine_cores": os.cpu_count(),
        "target": "benchmarks/targets.py trivial (uvicorn, raw ASGI)",
        "runs": rows,
        "best": best,
    }
    lines = [
        "# Load tester overhead — trivial local endpoint",
        "",
        f"Client and target share this {os.cpu_count()}-core machine; client CPU = (user + system time) / wall time of the load-test process.",
        "",
        "| run | ok req/s | sent req/s | client cores | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {r['run']} | {r['ok_rps']:.1f} | {r['sent_rps']:.1f} | {r['client_cores']:.2f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |"
            for r in rows
        ],
        "",
        f"Best error-free run: **{best['ok_rps']:.0f} req/s at {best['client_cores']:.2f} cores** (target ≥ 1,000 req/s under 1 core).",
        "",
    ]
    write_results("loadtest_tool", report, lines)


if __name__ == "__main__":
    main()
