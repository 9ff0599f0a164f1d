"""Multi-process training: `torchrun --nproc-per-node 2` (DDP, gloo on this CPU) reproduces the
single-process result, and only rank 0 writes the model repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from serving.manifest import load_manifest

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["train", "diagnosis", "--epochs", "12", "--no-quantise"]


def _run(argv: list[str], tmp: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_process_ddp_matches_single_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    _run([sys.executable, "-m", "training", *ARGS, "--repository", str(tmp_path / "single")], tmp_path)
    _run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "training",
            *ARGS,
            "--repository",
            str(tmp_path / "ddp"),
        ],
        tmp_path,
    )
    single = load_manifest(tmp_path / "single" / "diagnosis").variants["fp32"].metrics
    ddp = load_manifest(tmp_path / "ddp" / "diagnosis").variants["fp32"].metrics
    assert abs(single["accuracy"] - ddp["accuracy"]) <= 0.02  # ≤ 3 of 143 test cases
    assert abs(single["roc_auc"] - ddp["roc_auc"]) <= 0.01
    # rank 0 alone wrote the repository and the run folder (checkpoint, TensorBoard events)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["diagnosis"]
    run_dir = tmp_path / "runs" / "diagnosis"
    assert (run_dir / "last.pt").is_file() and any((run_dir / "tensorboard").iterdir())
