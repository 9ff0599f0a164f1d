"""Soak: mixed traffic over every endpoint at half the measured capacity for `--minutes` (default 10).

In one run, on the default models of the repository:

1. capacity: a closed loop of the mixed stream (text classify, entities, image, audio, tabular,
   forecast, in turn) at `--capacity-concurrency` for `--capacity-seconds`;
2. the soak: Poisson arrivals of the same stream at `--load` x capacity, latency counted from each
   request's intended send time; per `--interval-s` (30 s) the p50/p99, errors and the resident
   memory of the BentoML worker (sampled every 5 s), and the CPU that other processes took.

Reported: memory growth after warm-up (target < 10%), errors (target 0), p99 stability (the largest
interval p99 over the median interval p99, after warm-up). Writes benchmarks/results/soak.{json,md,png}.
Run: `python benchmarks/soak.py [--minutes 10]`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import RESULTS, server, tuneserve_server, write_results
from benchmarks.startup import rss_of_workers
from serving.loadtest.engine import StepStats, _attempt, arrival_times, run
from serving.loadtest.payloads import ENDPOINTS, Payload, builtin_payloads

MIX = tuple(ENDPOINTS)  # every task route
MEMORY_SAMPLE_S = 5.0


def mixed_stream() -> list[tuple[str, Payload]]:
    """(route, payload) for every endpoint of MIX in turn, each rotating through its built-in payloads."""
    payloads = {name: builtin_payloads(name, None) for name in MIX}
    rounds = max(len(p) for p in payloads.values())
    return [
        (ENDPOINTS[name].route, payloads[name][i % len(payloads[name])])
        for i in range(rounds)
        for name in MIX
    ]


def _client(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit), timeout=aiohttp.ClientTimeout(total=30)
    )


async def mixed_capacity(
    base: str, stream: list[tuple[str, Payload]], concurrency: int, seconds: float, warmup_s: float = 1.0
) -> dict[str, Any]:
    """Closed loop of the mixed stream: `concurrency` users, each sending its next request on an answer."""
    stats, rotation = StepStats("closed", concurrency), itertools.cycle(stream)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + seconds
    async with _client(concurrency) as session:

        async def user() -> None:
            while (sent := time.perf_counter()) < stop_at:
                route, payload = next(rotation)
                status, error = await _attempt(session, base + route, payload)
                if sent >= measure_from:
                    stats.sent += 1
                    stats.record(time.perf_counter() - sent, status, error)

        await asyncio.gather(*(user() for _ in range(concurrency)))
    stats.duration_s = seconds
    return stats.summary()


async def soak(
    base: str,
    stream: list[tuple[str, Payload]],
    rate: float,
    seconds: float,
    interval_s: float,
    others,
    max_in_flight: int = 1024,
) -> dict[str, Any]:
    """Open loop (Poisson arrivals at `rate`) for `seconds`: per interval the latency and errors (by
    intended send time) and the worker's memory; per route the latency over the whole run."""
    count = max(1, round(seconds / interval_s))
    intervals = [StepStats("open", rate) for _ in range(count)]
    per_route = {route: StepStats("open", 0) for route in dict.fromkeys(r for r, _ in stream)}
    memory: list[tuple[float, int]] = []  # (seconds since start, worker RSS bytes)
    cpu_marks = []
    rotation = itertools.cycle(stream)
    in_flight: set[asyncio.Task] = set()
    start = time.perf_counter()

    async def sample() -> None:
        for k in range(count):
            cpu_marks.append(others.mark())
            while time.perf_counter() < start + (k + 1) * interval_s:
                memory.append((time.perf_counter() - start, sum(rss_of_workers(os.getpid()))))
                await asyncio.sleep(
                    min(MEMORY_SAMPLE_S, max(0.0, start + (k + 1) * interval_s - time.perf_counter()))
                )
            intervals[k].server["other_processes_cores"] = others.cores_since(cpu_marks[k])

    async with _client(max_in_flight) as session:

        async def one(route: str, payload: Payload, intended: float, k: int) -> None:
            status, error = await _attempt(session, base + route, payload)
            latency = time.perf_counter() - intended
            intervals[k].record(latency, status, error)
            per_route[route].record(latency, status, error)

        sampler = asyncio.create_task(sample())
        for offset in arrival_times(rate, count * interval_s, "poisson"):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            k = min(count - 1, int(offset // interval_s))
            if len(in_flight) >= max_in_flight:
                intervals[k].dropped += 1
                continue
            intervals[k].sent += 1
            route, payload = next(rotation)
            task = asyncio.create_task(one(route, payload, start + offset, k))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)
        await sampler
    for stats in intervals:
        stats.duration_s = interval_s
    return {
        "intervals": [s.summary() for s in intervals],
        "per_route": {route: s.summary() for route, s in per_route.items()},
        "memory": memory,
    }


def analyse(result: dict[str, Any], interval_s: float, warmup_s: float) -> dict[str, Any]:
    """Memory growth after warm-up, errors, p99 stability."""
    memory, intervals = result["memory"], result["intervals"]
    warm = [rss for t, rss in memory if t >= warmup_s]
    after = [s for k, s in enumerate(intervals) if (k + 1) * interval_s > warmup_s] or intervals
    p99s = [s["p99_ms"] for s in after if s["p99_ms"] is not None]
    return {
        "warmup_s": warmup_s,
        "rss_after_warmup_bytes": warm[0] if warm else None,
        "rss_end_bytes": memory[-1][1] if memory else None,
        "rss_max_bytes": max((rss for _, rss in memory), default=None),
        "memory_growth": (max(warm) - warm[0]) / warm[0] if warm else None,
        "requests": sum(s["requests"] for s in intervals),
        "errors": sum(s["errors"] for s in intervals),
        "p99_stability": max(p99s) / statistics.median(p99s) if p99s else None,
        "p99_ms_after_warmup": p99s,
    }


def plot(result: dict[str, Any], interval_s: float, warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, memory) = plt.subplots(2, 1, figsize=(8, 6), dpi=110, sharex=True)
    mids = [(k + 0.5) * interval_s for k in range(len(result["intervals"]))]
    for pct, colour in (("p50_ms", "tab:blue"), ("p99_ms", "tab:orange")):
        latency.plot(mids, [s[pct] for s in result["intervals"]], marker="o", color=colour, label=pct[:-3])
    latency.set_ylabel(f"latency per {interval_s:g} s (ms)")
    latency.set_yscale("log")
    latency.legend()
    latency.grid(True, which="both", alpha=0.3)
    memory.plot(
        [t for t, _ in result["memory"]], [rss / 2**20 for _, rss in result["memory"]], color="tab:green"
    )
    memory.set_ylabel("worker RSS (MiB)")
    memory.set_xlabel("seconds")
    memory.grid(True, alpha=0.3)
    for ax in (latency, memory):
        ax.axvline(warmup_s, color="grey", linewidth=0.8, linestyle="--")
    fig.suptitle("Soak: mixed traffic at half capacity")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval-s", type=float, default=30.0)
    ap.add_argument(
        "--warmup-s",
        type=float,
        default=60.0,
        help="excluded from growth and stability (at most half the run)",
    )
    ap.add_argument("--load", type=float, default=0.5, help="fraction of the measured capacity")
    ap.add_argument("--capacity-concurrency", type=int, default=32)
    ap.add_argument("--capacity-seconds", type=float, default=5.0)
    args = ap.parse_args()
    from benchmarks.harness import OtherLoad

    others = OtherLoad()
    seconds = args.minutes * 60
    warmup_s = min(args.warmup_s, seconds / 2)
    stream = mixed_stream()
    argv, port, env = tuneserve_server(Path(args.repository))
    with server(argv, port, env) as base:
        mark = others.mark()
        capacity = run(mixed_capacity(base, stream, args.capacity_concurrency, args.capacity_seconds))
        capacity["other_processes_cores"] = others.cores_since(mark)
        rate = args.load * capacity["throughput_rps"]
        print(
            f"capacity {capacity['throughput_rps']:.1f} mixed req/s (p99 {capacity['p99_ms']:.1f} ms, errors {capacity['errors']}); soak at {rate:.1f} req/s for {seconds:g} s",
            flush=True,
        )
        result = run(soak(base, stream, rate, seconds, args.interval_s, others))
    summary = analyse(result, args.interval_s, warmup_s)
    report = {
        "cores": os.cpu_count(),
        "config": vars(args),
        "mix": list(MIX),
        "capacity": capacity,
        "rate_rps": rate,
        "summary": summary,
        **result,
    }
    plot(result, args.interval_s, warmup_s, RESULTS / "soak.png")
    write_results("soak", report, markdown(report))


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown(report: dict[str, Any]) -> list[str]:
    cfg, summary, capacity = report["config"], report["summary"], report["capacity"]
    growth, stability = summary["memory_growth"], summary["p99_stability"]
    lines = [
        "# Soak — mixed traffic at half capacity",
        "",
        f"{report['cores']} cores, one worker, the default models; the load generator runs on the same cores. "
        f"Mix, in turn: {', '.join(f'`{m}`' for m in report['mix'])}. Capacity (closed loop, concurrency {cfg['capacity_concurrency']}): "
        f"**{capacity['throughput_rps']:.1f} req/s**; soak at {cfg['load']:g}× = {report['rate_rps']:.1f} req/s, Poisson arrivals, "
        f"for {cfg['minutes']:g} min; latency from each request's intended send time.",
        "",
        "| measure | value | target |",
        "|---|---:|---|",
        f"| requests | {summary['requests']} | |",
        f"| errors | **{summary['errors']}** | 0 |",
        f"| worker RSS after warm-up ({summary['warmup_s']:g} s) → end (max) | {(summary['rss_after_warmup_bytes'] or 0) / 2**20:.0f} → {(summary['rss_end_bytes'] or 0) / 2**20:.0f} MiB ({(summary['rss_max_bytes'] or 0) / 2**20:.0f}) | |",
        f"| memory growth after warm-up | **{'–' if growth is None else f'{growth * 100:.1f}%'}** | < 10% |",
        f"| p99 stability: largest interval p99 / median interval p99, after warm-up | **{'–' if stability is None else f'{stability:.2f}×'}** | |",
        "",
        f"Per {cfg['interval_s']:g} s interval:",
        "",
        "| interval end s | requests | errors | p50 ms | p99 ms | max ms | other processes' cores |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {(k + 1) * cfg['interval_s']:g} | {s['requests']} | {s['errors']} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | {_ms(s['max_ms'])} | "
            f"{_ms(s['server'].get('other_processes_cores')) if s['server'].get('other_processes_cores') is None else format(s['server']['other_processes_cores'], '.2f')} |"
            for k, s in enumerate(report["intervals"])
        ],
        "",
        "Per route, whole run:",
        "",
        "| route | requests | errors | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| `{route}` | {s['requests']} | {s['errors']} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} |"
            for route, s in report["per_route"].items()
        ],
        "",
        "![latency and memory over the soak](soak.png)",
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
