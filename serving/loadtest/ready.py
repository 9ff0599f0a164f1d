"""Waiting for a server that was just started to answer."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx


def wait_ready(
    url: str,
    proc: subprocess.Popen,
    timeout_s: float = 180,
    poll_s: float = 0.5,
    log_path: Path | None = None,
) -> None:
    """Poll `url` until it answers 200; raise (with the log's tail) if `proc` exits or time runs out."""

    def tail() -> str:
        return "\n" + log_path.read_text()[-4000:] if log_path is not None and log_path.is_file() else ""

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}{tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            os.killpg(proc.pid, 9)
            raise RuntimeError(f"server not ready in {timeout_s} s{tail()}")
        time.sleep(poll_s)
