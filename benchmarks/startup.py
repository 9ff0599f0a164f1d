"""Startup and memory: from `bentoml serve` process start to /readyz 200 with every model of the
repository loaded (eager loading), and the resident memory of the worker; side by side with the
time it takes only to create the ONNX Runtime sessions for the same models (in a fresh process).

Writes benchmarks/results/startup.{json,md}. Run: `python benchmarks/startup.py [--runs 3]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import tuneserve_server, wait_ready, write_results

SESSIONS_ONLY = r"""
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
import onnxruntime
from serving.manifest import load_manifest
from serving.sessions import create_session
from serving.settings import Settings
t1 = time.perf_counter()
settings = Settings()
for manifest_path in sorted(Path(settings.repository).glob("*/manifest.json")):
    m = load_manifest(manifest_path.parent, verify=False)
    create_session(manifest_path.parent / m.variants[m.variant_for("cpu")].file, settings.intra_op_threads(), ["CPUExecutionProvider"])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "sessions_s": t2 - t1}))
"""


# The same server machinery with nothing in it: BentoML's own start-up cost on this machine.
EMPTY_SERVICE = """
import bentoml


@bentoml.service(name="empty")
class Empty:
    @bentoml.api
    def echo(self, x: int) -> int:
        return x
"""


def empty_start() -> float:
    """Seconds from `bentoml serve` of a one-route service with no models to its /readyz 200."""
    with tempfile.TemporaryDirectory(prefix="tuneserve-empty-") as folder:
        Path(folder, "empty_service.py").write_text(EMPTY_SERVICE)
        argv, port, env = tuneserve_server(ROOT / "exported")
        argv[argv.index("serving.service:TuneServe")] = "empty_service:Empty"
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            cwd=folder,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/readyz", proc, 60, poll_s=0.02)
            return time.perf_counter() - started
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)


def rss_of_workers(root_pid: int) -> list[int]:
    """Resident bytes of each BentoML worker process under `root_pid`."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = (proc / "status").read_text()
        except OSError:
            continue
        if "_bentoml_impl.worker.service" not in cmdline:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        _pid, ppid = int(proc.name), int(fields["PPid"].strip())
        if ppid == root_pid or _ancestor(root_pid, ppid):
            out.append(int(fields["VmRSS"].split()[0]) * 1024)
    return out


def _ancestor(root: int, pid: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        try:
            pid = int(
                next(
                    line
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("PPid:")
                ).split()[1]
            )
        except (OSError, StopIteration):
            return False
    return False


def one_start(repository: Path) -> dict:
    argv, port, env = tuneserve_server(repository)
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc, 180, poll_s=0.02)
        ready_s = time.perf_counter() - started
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["models"]
        time.sleep(1.0)
        rss = rss_of_workers(proc.pid)
        return {"ready_s": ready_s, "models": [m["name"] for m in models], "worker_rss_bytes": rss}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    repository = Path(args.repository)
    env = {**os.environ, "TUNESERVE_REPOSITORY": str(repository)}
    sessions, starts, empties = [], [], []
    for i in range(args.runs):
        empties.append(empty_start())
        done = subprocess.run(
            [sys.executable, "-c", SESSIONS_ONLY],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        sessions.append(json.loads(done.stdout.strip().splitlines()[-1]))
        starts.append(one_start(repository))
        print(
            f"  run {i + 1}: sessions only {sessions[-1]['sessions_s']:.2f} s (+ import {sessions[-1]['import_s']:.2f} s); "
            f"server ready {starts[-1]['ready_s']:.2f} s (empty BentoML service {empties[-1]:.2f} s); worker RSS {[round(r / 2**20) for r in starts[-1]['worker_rss_bytes']]} MiB",
            flush=True,
        )
    best_sessions = min(s["sessions_s"] + s["import_s"] for s in sessions)
    best_ready = min(s["ready_s"] for s in starts)
    rss = max(max(s["worker_rss_bytes"]) for s in starts)
    ratio = best_ready / best_sessions
    best_empty = min(empties)
    added = best_ready - best_empty
    report = {
        "cores": os.cpu_count(),
        "repository": str(repository),
        "models": starts[0]["models"],
        "sessions_only": sessions,
        "server": starts,
        "empty_service_ready_s": empties,
        "best_empty_ready_s": best_empty,
        "best_ready_s": best_ready,
        "best_sessions_s": best_sessions,
        "ready_vs_sessions": ratio,
        "added_vs_sessions": added / best_sessions,
        "max_worker_rss_bytes": rss,
    }
    lines = [
        "# Startup and memory",
        "",
        f"{os.cpu_count()} cores; {len(starts[0]['models'])} models ({', '.join(starts[0]['models'])}), eager loading, one worker; best of {args.runs} runs.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| `bentoml serve` start → `/readyz` 200 | {best_ready:.2f} s |",
        f"| ONNX Runtime import + session creation for the same models, fresh process | {best_sessions:.2f} s |",
        f"| ratio (target ≤ 3×) | **{ratio:.2f}×** |",
        f"| an empty BentoML service (one route, no models): start → `/readyz` 200 | {best_empty:.2f} s ({best_empty / best_sessions:.2f}× the sessions alone) |",
        f"| what tuneserve adds to BentoML's own start | {added:.2f} s ({added / best_sessions:.2f}× the sessions alone) |",
        f"| resident memory of the worker with every model loaded | {rss / 2**20:.0f} MiB |",
        "",
    ]
    write_results("startup", report, lines)


if __name__ == "__main__":
    main()
