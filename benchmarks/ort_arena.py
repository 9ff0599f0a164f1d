"""ONNX Runtime's CPU memory arena, on and off, side by side: time per run at small and large
batches, and the process's resident memory after large runs and after the heap is trimmed.

    python benchmarks/ort_arena.py [--repository exported] [--seconds 3]

Each setting runs in a fresh process (resident memory is per process), over every model of the
repository the server would open on the CPU, with inputs from each task's own samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import timed, write_results


def measure(repository: str, arena: bool, seconds: float) -> dict:
    """In this process: every model's time per run (batch of one request's items, and a large
    batch) and the resident memory before and after the large runs."""
    from serving.errors import RequestError
    from serving.memory import HeapTrimmer, resident_bytes
    from serving.server import ModelServer
    from serving.settings import Settings
    from serving.tasks import FileRequest, Upload

    server = ModelServer(Settings(repository=Path(repository), cpu_mem_arena=arena))
    loop = asyncio.new_event_loop()
    mib = 2**20
    runs: dict[str, dict] = {}
    large: dict[str, tuple] = {}
    for name, model in server.runtime.models.items():
        task = model.task
        requests = [
            task.request_model.model_validate({**s.json, "model": name})
            if s.json is not None and task.request_model is not None
            else FileRequest(name, [Upload(i, f, d) for i, (f, d, _) in enumerate(s.files)], dict(s.fields))
            for s in type(task).samples(64, name)
        ]
        try:
            prepared = [loop.run_until_complete(server.prepare(task, r)) for r in requests]
        except RequestError as exc:  # the task's built-in samples do not fit this model's inputs
            runs[name] = {"skipped": str(exc)[:120]}
            continue
        items = task.items(prepared[0])
        many = [item for p in prepared for item in task.items(p)]
        limit = server.settings.batch_limit(model.manifest.modality, "cpu")
        large[name] = (task, many[:limit])
        runs[name] = {
            "small_items": len(items),
            "small_ms": round(timed(lambda t=task, i=items: t.run(i), seconds) * 1000, 3),
            "large_items": len(many[:limit]),
            "large_ms": round(timed(lambda t=task, i=many[:limit]: t.run(i), seconds) * 1000, 3),
        }
    before = resident_bytes()
    for task, items in large.values():
        task.run(items)
    after = resident_bytes()
    trimmer = HeapTrimmer(growth=0)
    trim = trimmer.trim
    if trim is not None:
        trim()
    trimmed = resident_bytes()
    loop.close()
    return {
        "arena": arena,
        "models": runs,
        "resident_mib": {
            "before_large_runs": round(before / mib, 1),
            "after_large_runs": round(after / mib, 1),
            "after_trim": round(trimmed / mib, 1),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--arena", choices=["on", "off"], help=argparse.SUPPRESS)  # one measuring process
    args = ap.parse_args()
    if args.arena:
        print(json.dumps(measure(args.repository, args.arena == "on", args.seconds)))
        return

    results = {}
    for setting in ("on", "off"):
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--repository",
                args.repository,
                "--seconds",
                str(args.seconds),
                "--arena",
                setting,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    on, off = results["on"], results["off"]
    rows = []
    for name in on["models"]:
        a, b = on["models"][name], off["models"][name]
        if "skipped" in a:
            continue
        rows.append(
            {
                "model": name,
                "small_items": a["small_items"],
                "small_ms_arena": a["small_ms"],
                "small_ms_no_arena": b["small_ms"],
                "small_ratio": round(b["small_ms"] / a["small_ms"], 3),
                "large_items": a["large_items"],
                "large_ms_arena": a["large_ms"],
                "large_ms_no_arena": b["large_ms"],
                "large_ratio": round(b["large_ms"] / a["large_ms"], 3),
            }
        )
    report = {
        "benchmark": "ort_arena",
        "repository": args.repository,
        "seconds_per_measure": args.seconds,
        "when": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "resident_mib": {"arena": on["resident_mib"], "no_arena": off["resident_mib"]},
    }
    lines = [
        "# ONNX Runtime CPU memory arena: on vs off",
        "",
        f"Repository `{Path(args.repository).name}`; ms per ONNX Runtime call (the task's run stage), "
        "each setting in a fresh process. Ratio = off / on (above 1: slower without the arena).",
        "",
        "| model | items | ms, arena | ms, no arena | ratio | large batch items | ms, arena | ms, no arena | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['model']} | {r['small_items']} | {r['small_ms_arena']} | {r['small_ms_no_arena']} | "
            f"{r['small_ratio']} | {r['large_items']} | {r['large_ms_arena']} | {r['large_ms_no_arena']} | "
            f"{r['large_ratio']} |"
            for r in rows
        ),
        "",
        "| resident MiB | before the large runs | after them | after malloc_trim |",
        "|---|---:|---:|---:|",
        *(
            f"| {label} | {m['before_large_runs']} | {m['after_large_runs']} | {m['after_trim']} |"
            for label, m in (("arena", on["resident_mib"]), ("no arena", off["resident_mib"]))
        ),
        "",
    ]
    write_results("ort_arena", report, lines)


if __name__ == "__main__":
    main()
