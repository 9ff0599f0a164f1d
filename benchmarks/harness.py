"""Shared benchmark plumbing: start a server process on a free port, wait until ready, load it, stop it."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from serving.loadtest.engine import closed_loop, run
from serving.loadtest.payloads import Payload
from serving.loadtest.ready import wait_ready
from serving.loadtest.server_metrics import scrape, server_delta

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def model_benchmark_args(description: str, model: str, concurrency: str) -> argparse.Namespace:
    """The options every model benchmark takes."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--model", default=model)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--concurrency", default=concurrency)
    ap.add_argument("--engine-seconds", type=float, default=4.0)
    ap.add_argument("--served-seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return ap.parse_args()


def write_results(name: str, report: dict, markdown_lines: list[str]) -> None:
    """benchmarks/results/<name>.json and .md; the Markdown is also printed."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = "\n".join(markdown_lines)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


def machine_info() -> dict:
    """The machine and library versions a model benchmark's results were measured with."""
    import onnxruntime
    import torch

    from serving.sessions import cpu_int8_products

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        # INT8 speed (and ONNX Runtime's kernel for it) depends on this CPU class
        "int8_products": cpu_int8_products(),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(
    argv: list[str],
    port: int,
    env: dict[str, str] | None = None,
    ready_path: str = "/readyz",
    timeout_s: float = 180,
    cwd: Path = ROOT,
    started: list[subprocess.Popen] | None = None,
) -> Iterator[str]:
    """The server of `argv` up and ready, in a session of its own (`tree_cpu_seconds(proc.pid)`
    counts all its processes; all are stopped at the end); `started` gets its process."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    if started is not None:
        started.append(proc)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + ready_path, proc, timeout_s)
        yield base
    finally:
        strays = _tree(proc.pid, _processes()) if os.path.exists("/proc") else set()
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        for pid in strays - {proc.pid}:  # descendants in sessions of their own (Ray's cluster)
            with suppress(ProcessLookupError):
                os.kill(pid, 9)


def _processes() -> dict[int, tuple[int, int, float]]:
    """pid → (parent, session, CPU seconds user + system) of every live process (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # from the state on: state ppid pgrp session ... utime (11) stime (12)
        procs[int(entry)] = (int(fields[1]), int(fields[3]), (int(fields[11]) + int(fields[12])) / tick)
    return procs


def _tree(root: int, procs: dict[int, tuple[int, int, float]]) -> set[int]:
    """`root`'s session and every descendant (BentoML's workers and Ray's processes start sessions
    of their own)."""
    ours = {pid for pid, (_, session, _) in procs.items() if session == root or pid == root}
    grew = True
    while grew:
        grew = False
        for pid, (parent, _, _) in procs.items():
            if parent in ours and pid not in ours:
                ours.add(pid)
                grew = True
    return ours


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of the live processes started from `root` (its session and descendants)."""
    procs = _processes()
    return sum(procs[pid][2] for pid in _tree(root, procs))


def cpu_measured_step(
    base: str, route: str, payloads: list[Payload], concurrency: int, seconds: float, root: int
) -> dict:
    """One closed-loop step, with the server's CPU over it (every process started from `root`)."""
    cpu_before, wall_before = tree_cpu_seconds(root), time.monotonic()
    stats = run(closed_loop(base + route, payloads, concurrency, seconds, warmup_s=1.0))
    cpu, wall = tree_cpu_seconds(root) - cpu_before, time.monotonic() - wall_before
    s = stats.summary()
    return {
        "concurrency": concurrency,
        "req_s": s["throughput_rps"],
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"],
        "errors": s["errors"],
        "server_cores": cpu / wall,
        "server_cpu_ms_per_request": 1000 * cpu / max(s["ok"] + s["errors"], 1),
    }


def tuneserve_server(repository: Path) -> tuple[list[str], int, dict[str, str]]:
    port = free_port()
    argv = [
        str(Path(sys.executable).with_name("bentoml")),
        "serve",
        "serving.service:TuneServe",
        "--port",
        str(port),
    ]
    # BentoML keeps Prometheus' multi-process files under BENTOML_HOME and wipes them when a server
    # starts: a server of its own home keeps its /metrics apart from any other server on the machine.
    home = tempfile.mkdtemp(prefix="tuneserve-bentoml-home-")
    return argv, port, {"TUNESERVE_REPOSITORY": str(repository), "BENTOML_HOME": home}


def closed_loop_sweep(
    base: str, route: str, payloads: list[Payload], concurrencies: list[int], seconds: float, label: str
) -> list[dict]:
    rows = []
    for c in concurrencies:
        before = scrape(base)
        stats = run(closed_loop(base + route, payloads, c, seconds, warmup_s=1.0))
        stats.server = server_delta(before, scrape(base), route)
        row = stats.summary()
        rows.append(row)
        batch = row["server"].get("mean_batch_size")
        print(
            f"  {label} c={c:3}: {row['throughput_rps']:7.1f} req/s  p50 {row['p50_ms']:.1f} p95 {row['p95_ms']:.1f} p99 {row['p99_ms']:.1f} ms"
            f"  errors {row['errors']}" + (f"  mean batch {batch:.1f}" if batch else ""),
            flush=True,
        )
    return rows


def eager_model(model_dir: Path):
    """The exported model as a PyTorch eager module: the task's architecture with the weights of the
    traced TorchScript file (same names; a few non-persistent buffers differ, hence the check)."""
    import torch

    from serving.manifest import load_manifest
    from training.backbones import get_backbone
    from training.recipe import Recipe
    from training.tasks import get_task

    manifest = load_manifest(model_dir)
    recipe = Recipe.model_validate(manifest.recipe)
    task = get_task(manifest.task)(recipe, get_backbone(recipe.backbone))
    task.restore(manifest.preprocessing)
    model = task.build_model(manifest.labels)
    missing, _ = model.load_state_dict(torch.jit.load(str(model_dir / "model.ts")).state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"TorchScript weights lack {missing}")
    return model.eval()


def time_engines(runs: dict, batch: int, seconds: float, unit: str) -> list[dict]:
    """Throughput of each engine callable on one batch: rows of engine, batch, ms/batch, <unit>_per_s."""
    rows = []
    for engine, fn in runs.items():
        sec = timed(fn, seconds)
        rows.append(
            {"engine": engine, "batch": batch, "ms_per_batch": sec * 1000, f"{unit}_per_s": batch / sec}
        )
        print(
            f"  {engine:22} batch {batch:3}: {batch / sec:8.1f} {unit}/s  ({sec * 1000:.1f} ms/batch)",
            flush=True,
        )
    return rows


class EngineThread:
    """A thread of its own to open and time engines on, as the server's inference threads are.
    tuneserve's sessions flush denormals only while they run and then restore the thread's state
    (`serving.sessions.denormals_flushed`), so a bare ONNX Runtime session opened with
    `session_options(..., flush=False)` and timed here runs as ONNX Runtime does by default."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._pool.submit(lambda: None).result()

    def call(self, fn, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs).result()


def timed(fn, seconds: float, min_iters: int = 5) -> float:
    """Mean seconds per call over at least `min_iters` calls and `seconds` of wall time (after 2 warm-ups)."""
    fn(), fn()
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n


def serve_and_sweep(
    repository: Path,
    model: str,
    route: str,
    payloads: list[Payload],
    concurrencies: list[int],
    seconds: float,
) -> tuple[dict, list[dict]]:
    """Start tuneserve on the repository, read the model's public info, run the closed-loop sweep."""
    argv, port, env = tuneserve_server(repository)
    with server(argv, port, env) as base:
        info = next(m for m in httpx.get(base + "/v1/models").json()["models"] if m["name"] == model)
        return info, closed_loop_sweep(base, route, payloads, concurrencies, seconds, "tuneserve")


def served_table(rows: list[dict], unit: str = "req/s") -> list[str]:
    """Markdown rows of a closed-loop sweep, with the server's mean batch size."""
    return [
        f"| concurrency | {unit} | p50 ms | p95 ms | p99 ms | p99.9 ms | errors | server mean batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {s['load']:g} | {s['throughput_rps']:.1f} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | {s['p99.9_ms']:.1f} | {s['errors']} | {s['server'].get('mean_batch_size', 0):.1f} |"
            for s in rows
        ],
    ]


class OtherLoad:
    """How much of the (shared) CPU other processes took: samples the machine's busy time and this
    benchmark's own CPU (this process, which also runs the load generator, and its descendants, the
    server) a few times a second. Linux only; elsewhere every figure is None."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.available = os.path.exists("/proc/stat")
        self.tick = os.sysconf("SC_CLK_TCK") if self.available else 100
        self.seen: dict[int, float] = {}  # pid → last CPU seconds seen (kept after the process exits)
        self.lock = threading.Lock()
        if self.available:
            threading.Thread(target=self._loop, args=(interval_s,), daemon=True).start()

    def _loop(self, interval_s: float) -> None:
        while True:
            self.mark()
            time.sleep(interval_s)

    def mark(self) -> tuple[float, float, float] | None:
        """(machine busy CPU s, own CPU s, wall s) now."""
        if not self.available:
            return None
        stats = {}
        for entry in os.listdir("/proc"):
            try:
                fields = (
                    open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split() if entry.isdigit() else None
                )
            except OSError:
                continue
            if fields:
                stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / self.tick)
        own, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, (ppid, _) in stats.items() if ppid == parent and pid not in own]
            own.update(children)
            frontier += children
        cpu = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
        with self.lock:
            for pid in own:
                self.seen[pid] = (
                    max(self.seen.get(pid, 0.0), stats[pid][1]) if pid in stats else self.seen.get(pid, 0.0)
                )
            return (sum(cpu) - cpu[3] - cpu[4]) / self.tick, sum(self.seen.values()), time.monotonic()

    def cores_since(self, start) -> float | None:
        """Cores other processes used, on average, since `start` (a `mark()`)."""
        end = self.mark()
        if start is None or end is None:
            return None
        return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / (end[2] - start[2]))
