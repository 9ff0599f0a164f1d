"""Overload: a burst at 10x the measured capacity against a server with a concurrency or queue limit.

In one run, on the real `intent` model with 32 texts per request (slow enough that a Python client on
the same cores can send 10x what the server can answer):

1. default settings: closed loop at concurrency 16 and 64 (one text, and 32 texts per request) must
   give zero errors;
2. for each limit (`TUNESERVE_MAX_CONCURRENCY`, answered by BentoML with 429, and
   `TUNESERVE_MAX_QUEUE`, answered by the batcher with 503), a fresh server:
   - every distinct request sent alone, twice: the reference answers and the baseline p50;
   - capacity: closed loop at the limit's concurrency;
   - the burst: open-loop arrivals at `--factor` x capacity for `--burst-seconds`; the excess must be
     refused fast (429/503 with a message), every admitted request must answer what it answered alone;
   - recovery: from the burst's last arrival, requests one at a time until the median of five in a
     row is back within 1.2x the baseline p50.

Writes benchmarks/results/overload.{json,md}. Run: `python benchmarks/overload.py`.
The test tests/test_overload.py runs the same burst (`overload_run`) on the tiny test models.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import closed_loop_sweep, served_table, server, tuneserve_server, write_results
from serving.loadtest.engine import arrival_times, closed_loop, run
from serving.loadtest.payloads import Payload, builtin_payloads, json_payload

ROUTE = "/v1/text/classify"
REFUSALS = {429, 503}
# Served INT8 models are quantised statically (activation ranges fixed in the graph), so a text's
# answer does not depend on its batch-mates: equal to its answer alone up to float rounding.
SCORE_TOLERANCE = 1e-4
RECOVERY_FACTOR, RECOVERY_WINDOW = 1.2, 5


def text_batches(model: str | None, per_request: int, count: int) -> list[Payload]:
    """`count` distinct requests of `per_request` texts each, from the load tester's built-in texts."""
    texts = [json.loads(p.json_body)["texts"][0] for p in builtin_payloads("text/classify", None)]
    body = {"model": model} if model else {}
    return [
        json_payload(
            {**body, "texts": [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]}
        )
        for i in range(count)
    ]


@dataclass
class Outcome:
    """One request: which payload, when it was sent and answered, and what came back."""

    payload: int
    sent: float
    done: float
    status: int | None = None
    body: Any = None  # parsed JSON, else the text
    error: str | None = None  # exception name when no response came back

    @property
    def ms(self) -> float:
        return (self.done - self.sent) * 1000


async def send(session: aiohttp.ClientSession, url: str, payloads: list[Payload], index: int) -> Outcome:
    sent = time.perf_counter()
    try:
        async with session.post(url, **payloads[index].request_kwargs()) as response:
            text = await response.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            return Outcome(index, sent, time.perf_counter(), response.status, body)
    except TimeoutError:
        return Outcome(index, sent, time.perf_counter(), error="Timeout")
    except (aiohttp.ClientError, OSError) as exc:
        return Outcome(index, sent, time.perf_counter(), error=type(exc).__name__)


def session(limit: int = 1024, timeout_s: float = 60) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit), timeout=aiohttp.ClientTimeout(total=timeout_s)
    )


async def alone(url: str, payloads: list[Payload], passes: int = 2) -> tuple[list[Any], float]:
    """Each payload sent alone, one at a time, `passes` times: the first pass's answers (the reference)
    and the p50 ms of the last pass (the baseline)."""
    async with session(1) as client:
        for p in range(passes):
            outcomes = [await send(client, url, payloads, i) for i in range(len(payloads))]
            bad = [o for o in outcomes if o.status != 200]
            if bad:
                raise RuntimeError(f"a request alone failed: {bad[0]}")
            if p == 0:
                reference = [o.body["predictions"] for o in outcomes]
    return reference, statistics.median(o.ms for o in outcomes)


def answer_difference(got: list[dict], expected: list[dict]) -> float:
    """Largest score difference between two answers to the same texts; infinite when they have a
    different shape or a label differs where the answer alone was not a close call."""
    if len(got) != len(expected) or any(
        g["scores"].keys() != e["scores"].keys() for g, e in zip(got, expected)
    ):
        return float("inf")
    worst = 0.0
    for g, e in zip(got, expected):
        top = sorted(e["scores"].values(), reverse=True)
        if g["label"] != e["label"] and top[0] - top[1] > 2 * SCORE_TOLERANCE:
            return float("inf")
        worst = max(worst, max(abs(g["scores"][k] - e["scores"][k]) for k in e["scores"]))
    return worst


def refusal_message(body: Any) -> str | None:
    """The message of a refusal: the JSON `error`, or a plain-text body; None when there is neither."""
    if isinstance(body, dict):
        return body.get("error") or None
    return body.strip() or None if isinstance(body, str) else None


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def probe_recovery(
    url: str, payloads: list[Payload], since: float, baseline_ms: float, limit_s: float
) -> dict[str, Any]:
    """Requests one at a time from `since` (the burst's last arrival) until the median latency of
    RECOVERY_WINDOW in a row is within RECOVERY_FACTOR x `baseline_ms`; a refusal counts as not
    recovered. `recovered_s`: seconds from `since` to the answer of that window's first request
    within the threshold."""
    threshold = RECOVERY_FACTOR * baseline_ms
    probes: list[Outcome] = []
    recovered = None
    async with session(1) as client:
        while recovered is None and time.perf_counter() - since < limit_s:
            probes.append(await send(client, url, payloads, len(probes) % len(payloads)))
            if probes[-1].status != 200:
                await asyncio.sleep(0.01)  # refused at once: do not spin on the server
            window = probes[-RECOVERY_WINDOW:]
            if (
                len(window) == RECOVERY_WINDOW
                and statistics.median(o.ms if o.status == 200 else float("inf") for o in window) <= threshold
            ):
                recovered = next(o.done for o in window if o.status == 200 and o.ms <= threshold) - since
    return {
        "recovered_s": recovered,
        "threshold_ms": threshold,
        "refused_probes": sum(o.status != 200 for o in probes),
        # (seconds after `since` it was answered, ms or None when refused) of every probe
        "probes": [(round(o.done - since, 3), round(o.ms, 1) if o.status == 200 else None) for o in probes],
    }


async def burst(
    url: str,
    payloads: list[Payload],
    rate: float,
    seconds: float,
    baseline_ms: float,
    recovery_limit_s: float,
) -> tuple[list[Outcome], dict, dict]:
    """Arrivals at `rate` per second, evenly spaced, for `seconds`, whatever the answers; recovery
    probing starts at the last arrival, while the admitted requests are still draining. Returns the
    outcomes; the client side (how long the arrivals took, the client's own event-loop lag until the
    last answer: a stalled client shows up as slow answers it did not get from the server); the recovery."""
    tasks, lags, done = [], [], asyncio.Event()

    async def watch_lag() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - before - 0.001) * 1000)

    async with session() as http:
        watcher = asyncio.create_task(watch_lag())
        start = time.perf_counter()
        for n, offset in enumerate(arrival_times(rate, seconds, "constant")):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(http, url, payloads, n % len(payloads))))
        sending_s = time.perf_counter() - start
        recovery = await probe_recovery(url, payloads, time.perf_counter(), baseline_ms, recovery_limit_s)
        outcomes = list(await asyncio.gather(*tasks))
        done.set()
        await watcher
    client = {
        "achieved_rps": len(outcomes) / sending_s,
        "client_lag_p99_ms": percentile(lags, 99),
        "client_lag_max_ms": max(lags, default=None),
    }
    return outcomes, client, recovery


def summarize(outcomes: list[Outcome], reference: list[Any]) -> dict[str, Any]:
    admitted = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status in REFUSALS]
    statuses: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.error is None else o.error
        statuses[key] = statuses.get(key, 0) + 1
    differences = [answer_difference(o.body["predictions"], reference[o.payload]) for o in admitted]
    wrong = sum(d >= SCORE_TOLERANCE for d in differences)
    return {
        "sent": len(outcomes),
        "admitted": len(admitted),
        "refused": len(refused),
        "statuses": statuses,
        "other_5xx": sum(
            1 for o in outcomes if o.status is not None and o.status >= 500 and o.status not in REFUSALS
        ),
        "no_response": sum(1 for o in outcomes if o.error is not None),
        "refusals_without_message": sum(1 for o in refused if refusal_message(o.body) is None),
        "refusal_messages": sorted({refusal_message(o.body) or "" for o in refused})[:5],
        "admitted_correct": len(admitted) - wrong,
        "admitted_correct_fraction": (len(admitted) - wrong) / len(admitted) if admitted else None,
        "admitted_max_score_difference": max(differences, default=None),
        "refused_p50_ms": percentile([o.ms for o in refused], 50),
        "refused_p99_ms": percentile([o.ms for o in refused], 99),
        "admitted_p50_ms": percentile([o.ms for o in admitted], 50),
        "admitted_p99_ms": percentile([o.ms for o in admitted], 99),
    }


def overload_run(
    base: str,
    payloads: list[Payload],
    limit_concurrency: int,
    factor: float = 10.0,
    capacity_seconds: float = 4.0,
    burst_seconds: float = 3.0,
    recovery_limit_s: float = 20.0,
) -> dict[str, Any]:
    """Reference answers and baseline, capacity at `limit_concurrency`, then the burst at `factor` x
    capacity and the recovery, against the server at `base`."""
    url = base + ROUTE
    reference, baseline_ms = asyncio.run(alone(url, payloads))
    capacity = run(closed_loop(url, payloads, limit_concurrency, capacity_seconds, warmup_s=1.0)).summary()
    rate = factor * capacity["throughput_rps"]
    outcomes, client, recovery = asyncio.run(
        burst(url, payloads, rate, burst_seconds, baseline_ms, recovery_limit_s)
    )
    return {
        "baseline_p50_ms": baseline_ms,
        "capacity": {
            "concurrency": limit_concurrency,
            "rps": capacity["throughput_rps"],
            "p50_ms": capacity["p50_ms"],
            "p99_ms": capacity["p99_ms"],
            "errors": capacity["errors"],
            "statuses": capacity["statuses"],
        },
        "burst": {
            "factor": factor,
            "target_rps": rate,
            "seconds": burst_seconds,
            **client,
            **summarize(outcomes, reference),
        },
        "recovery": recovery,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--model", default="intent")
    ap.add_argument("--texts-per-request", type=int, default=32)
    ap.add_argument(
        "--max-concurrency", type=int, default=16, help="TUNESERVE_MAX_CONCURRENCY for the 429 run"
    )
    ap.add_argument("--factor", type=float, default=10.0)
    ap.add_argument("--burst-seconds", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=4.0, help="per closed-loop step")
    args = ap.parse_args()
    from benchmarks.harness import OtherLoad

    others = OtherLoad()
    repository = Path(args.repository)
    batches = text_batches(args.model, args.texts_per_request, 16)
    limit = args.max_concurrency

    print("default settings, closed loop:", flush=True)
    start = others.mark()
    argv, port, env = tuneserve_server(repository)
    with server(argv, port, env) as base:
        single = closed_loop_sweep(
            base, ROUTE, builtin_payloads("text/classify", args.model), [16, 64], args.seconds, "1 text"
        )
        multi = closed_loop_sweep(
            base, ROUTE, batches, [16, 64], args.seconds, f"{args.texts_per_request} texts"
        )
    defaults = {
        "single_text": single,
        "texts_per_request": multi,
        "errors": sum(r["errors"] for r in single + multi),
        "other_processes_cores": others.cores_since(start),
    }

    limits = {
        # BentoML's MaxConcurrencyMiddleware: 429 once `limit` requests are in flight in the worker
        "max_concurrency": {"TUNESERVE_MAX_CONCURRENCY": str(limit)},
        # the batcher: 503 once `limit` requests' worth of items wait in the model's queue
        "max_queue": {"TUNESERVE_MAX_QUEUE": str(limit * args.texts_per_request)},
    }
    runs = {}
    for name, settings in limits.items():
        print(f"burst with {settings}:", flush=True)
        start = others.mark()
        argv, port, env = tuneserve_server(repository)
        with server(argv, port, {**env, **settings}) as base:
            result = overload_run(base, batches, limit, args.factor, args.seconds, args.burst_seconds)
        result |= {"settings": settings, "other_processes_cores": others.cores_since(start)}
        runs[name] = result
        b, r = result["burst"], result["recovery"]
        print(
            f"  capacity {result['capacity']['rps']:.1f} req/s; burst {b['sent']} at {b['achieved_rps']:.0f} req/s: {b['statuses']}; "
            f"refused p50 {b['refused_p50_ms']} p99 {b['refused_p99_ms']} ms; correct {b['admitted_correct']}/{b['admitted']}; recovered in {r['recovered_s']} s",
            flush=True,
        )

    report = {
        "model": args.model,
        "cores": os.cpu_count(),
        "config": vars(args),
        "defaults": defaults,
        "runs": runs,
    }
    write_results("overload", report, markdown(report))


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown(report: dict[str, Any]) -> list[str]:
    cfg, defaults = report["config"], report["defaults"]
    k = cfg["texts_per_request"]
    lines = [
        f"# Overload — `{cfg['model']}`, `POST {ROUTE}`",
        "",
        f"{report['cores']} cores, one worker; the load generator runs on the same cores as the server.",
        "",
        f"## Default settings, closed loop (target: zero errors at concurrency ≤ 64) — **{defaults['errors']} errors**",
        "",
        f"Other processes used {defaults['other_processes_cores'] or 0:.2f} cores on average.",
        "",
        "One text per request:",
        "",
        *served_table(defaults["single_text"]),
        "",
        f"{k} texts per request:",
        "",
        *served_table(defaults["texts_per_request"]),
        "",
        f"## Bursts at {cfg['factor']:g}× capacity for {cfg['burst_seconds']:g} s ({k} texts per request)",
        "",
        "Capacity is the closed-loop throughput at the limit's concurrency, measured first on the same server. "
        f"Targets: refusals 429/503 with p99 < 50 ms; admitted answers 100% equal to the same request sent alone "
        f"(same labels, scores within {SCORE_TOLERANCE}: the served INT8 model is quantised statically, so batch-mates do not move an answer); back to {RECOVERY_FACTOR}× the baseline p50 (median of {RECOVERY_WINDOW} requests in a row, "
        "one at a time) within 5 s of the burst's last arrival. The client's event-loop lag is measured during the burst: "
        "a refusal that took as long as a client stall was slow in the client, not in the server.",
        "",
        "| limit | setting | capacity req/s | baseline p50 ms | burst sent | sent req/s | admitted | refused | statuses | refused p50 ms | refused p99 ms | client loop lag p99 / max ms | admitted p99 ms | admitted correct | recovered in s | other cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["runs"].items():
        b, rec = r["burst"], r["recovery"]
        setting = ", ".join(f"`{k}={v}`" for k, v in r["settings"].items())
        statuses = ", ".join(f"{s}×{n}" for s, n in sorted(b["statuses"].items()))
        correct = (
            f"{b['admitted_correct']}/{b['admitted']} (max Δ {b['admitted_max_score_difference'] or 0:.3f})"
        )
        recovered = "not in time" if rec["recovered_s"] is None else f"{rec['recovered_s']:.2f}"
        lines.append(
            f"| {name} | {setting} | {r['capacity']['rps']:.1f} | {r['baseline_p50_ms']:.1f} | {b['sent']} | {b['achieved_rps']:.0f} | {b['admitted']} | {b['refused']} | {statuses} | "
            f"{_ms(b['refused_p50_ms'])} | {_ms(b['refused_p99_ms'])} | {_ms(b['client_lag_p99_ms'])} / {_ms(b['client_lag_max_ms'])} | {_ms(b['admitted_p99_ms'])} | {correct} | {recovered} | {r['other_processes_cores'] or 0:.2f} |"
        )
    lines += [
        "",
        "Refusal messages: "
        + "; ".join(
            f"{name}: " + " / ".join(f"`{m}`" for m in r["burst"]["refusal_messages"])
            for name, r in report["runs"].items()
        ),
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
