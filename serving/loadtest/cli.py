"""`tuneserve loadtest URL ...`: sweeps of closed- or open-loop load, a terminal summary and reports."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import platform
import re
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from serving.loadtest import report as reports
from serving.loadtest.engine import closed_loop, open_loop, run
from serving.loadtest.payloads import builtin_payloads, get_endpoint, payloads_from_file, v2_payloads
from serving.loadtest.server_metrics import scrape, server_delta
from serving.tasks import TASKS

_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "": 1.0}


def parse_seconds(text: str) -> float:
    """'20s', '2m', '500ms' or a bare number of seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 20s, 2m, 500ms)")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def parse_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"need positive numbers: {text!r}")
    return values


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        # IPv4 and IPv6 addresses are (host, port, ...); only a family Python cannot decode gives an int
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None) if isinstance(info[4][0], str)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def served_model(base: str, endpoint_model: str | None) -> dict[str, Any] | None:
    try:
        models = httpx.get(base + "/v1/models", timeout=5).json()["models"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    chosen = next((m for m in models if m.get("name") == endpoint_model), None)
    return {k: chosen.get(k) for k in ("name", "version", "variant", "provider", "task")} if chosen else None


async def run_steps(
    args: argparse.Namespace, url: str, payloads: list, base: str, route: str
) -> list[dict[str, Any]]:
    steps = []
    loads = args.concurrency if args.mode == "closed" else args.rate
    for load in loads:
        before = scrape(base)
        if args.mode == "closed":
            stats = await closed_loop(
                url, payloads, int(load), args.duration, args.warmup, args.max_requests, args.timeout
            )
        else:
            stats = await open_loop(
                url,
                payloads,
                load,
                args.duration,
                args.warmup,
                args.arrival,
                args.max_requests,
                args.max_in_flight,
                args.timeout,
            )
        stats.server = server_delta(before, scrape(base), route)
        summary = stats.summary()
        steps.append(summary)
        unit = "c" if args.mode == "closed" else "rate"
        print(
            f"  {unit}={load:<6g} {summary['throughput_rps']:8.1f} req/s  p50 {reports._fmt(summary['p50_ms'])}  p99 {reports._fmt(summary['p99_ms'])}  "
            f"max {reports._fmt(summary['max_ms'])} ms  errors {summary['errors']}"
            + (
                f"  batch {summary['server']['mean_batch_size']:.1f}"
                if "mean_batch_size" in summary["server"]
                else ""
            ),
            flush=True,
        )
    return steps


def cmd_loadtest(args: argparse.Namespace) -> int:
    if args.compare:
        paths = reports.compare(Path(args.compare[0]), Path(args.compare[1]), Path(args.out))
        print(paths["md"].read_text())
        print(f"wrote {paths['md']} and {paths['png']}")
        return 0
    if not args.url:
        print(
            "error: give the server URL (e.g. http://localhost:3000) or --compare A.json B.json",
            file=sys.stderr,
        )
        return 2
    base = args.url.rstrip("/")
    if not args.allow_remote and not is_loopback(base):
        print(
            f"error: {urlsplit(base).hostname} is not a loopback address; pass --allow-remote to load-test another host",
            file=sys.stderr,
        )
        return 2
    try:
        endpoint = get_endpoint(args.endpoint)
        model = args.model or (args.payload if args.payload not in (None, "builtin") else None)
        if args.protocol == "v2":
            if args.payload_file:
                raise ValueError(
                    "--protocol v2 sends the task's built-in samples as binary tensors; --payload-file is for v1"
                )
            route, payloads = v2_payloads(args.endpoint, model)
        else:
            route = endpoint.route
            payloads = (
                payloads_from_file(args.endpoint, Path(args.payload_file), model)
                if args.payload_file
                else builtin_payloads(args.endpoint, model)
            )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.mode == "closed" and not args.concurrency:
        args.concurrency = [1, 8, 32, 64]
    if args.mode == "open" and not args.rate:
        print("error: --mode open needs --rate (e.g. --rate 50,100,200)", file=sys.stderr)
        return 2
    url = base + route
    print(
        f"load test {url} ({args.mode} loop, {len(payloads)} rotating payloads, {args.duration:g} s per step after {args.warmup:g} s warm-up)",
        flush=True,
    )
    try:
        steps = run(run_steps(args, url, payloads, base, route))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    report = {
        "tool": "tuneserve loadtest",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "target": base,
        "endpoint": route,
        "served": served_model(base, model or endpoint.default_model),
        "machine": machine_info(),
        "config": {
            "mode": args.mode,
            "arrival": args.arrival,
            "loads": args.concurrency if args.mode == "closed" else args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "max_requests": args.max_requests,
            "timeout_s": args.timeout,
            "payload": args.payload_file or f"builtin ({len(payloads)})",
            "model": model,
        },
        "steps": steps,
    }
    if args.slo_p99 is not None:
        slo_ms = args.slo_p99 * 1000
        report["slo"] = {"p99_ms": slo_ms, "max_error_rate": 0.001, "knee": reports.knee(steps, slo_ms)}
    paths = reports.write(report, Path(args.out))
    print()
    print(reports.markdown(report))
    print(f"wrote {paths['json']}, {paths['md']}, {paths['png']}")
    return 0


def add_loadtest_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loadtest", help="load-test an endpoint: closed or open loop, latency percentiles, reports"
    )
    p.add_argument("url", nargs="?", help="server base URL, e.g. http://localhost:3000")
    routes = [task.route.lstrip("/") for task in TASKS.values()]
    p.add_argument("--endpoint", default=routes[0], help=", ".join(routes))
    p.add_argument(
        "--protocol",
        choices=["v1", "v2"],
        default="v1",
        help="v2: the Open Inference Protocol with binary tensors, on the endpoint's task",
    )
    p.add_argument("--payload", help="built-in payload set, named by the model it targets (e.g. intent)")
    p.add_argument(
        "--payload-file",
        help="your payloads: JSONL of request bodies, or a folder of files for multipart endpoints",
    )
    p.add_argument(
        "--model",
        help="model name to put in each request (default: the payload's, else the server's default)",
    )
    p.add_argument("--mode", choices=["closed", "open"], default="closed")
    p.add_argument(
        "--concurrency", type=parse_list, help="closed loop: in-flight requests per step (default 1,8,32,64)"
    )
    p.add_argument("--rate", type=parse_list, help="open loop: target req/s per step")
    p.add_argument(
        "--arrival", choices=["poisson", "constant"], default="poisson", help="open loop arrival process"
    )
    p.add_argument(
        "--duration",
        type=parse_seconds,
        default=parse_seconds("20s"),
        help="measured time per step (default 20s)",
    )
    p.add_argument(
        "--warmup",
        type=parse_seconds,
        default=parse_seconds("2s"),
        help="unmeasured warm-up per step (default 2s)",
    )
    p.add_argument("--max-requests", type=int, help="stop a step after this many measured requests")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=4096,
        help="open loop: arrivals beyond this many outstanding are dropped and counted as errors",
    )
    p.add_argument("--timeout", type=parse_seconds, default=parse_seconds("30s"), help="per-request timeout")
    p.add_argument(
        "--slo-p99",
        type=parse_seconds,
        help="report the highest load meeting this p99 with < 0.1%% errors, e.g. 200ms",
    )
    p.add_argument(
        "--out",
        default="loadtest-report",
        help="folder for report.json, report.md, latency_vs_throughput.png",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A.json", "B.json"),
        help="render two reports side by side instead of running",
    )
    p.add_argument(
        "--allow-remote", action="store_true", help="allow a target that is not a loopback address"
    )
    p.set_defaults(func=cmd_loadtest)
