"""Closed-loop HTTP load generation: N requests always outstanding against one route.

Used by the benchmarks; warm-up is excluded, each step is bounded by its duration and stops by itself.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np


@dataclass
class StepResult:
    concurrency: int
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)  # "200", "503", "ClientConnectorError", ...

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        ok = sum(n for s, n in self.statuses.items() if s.isdigit() and 200 <= int(s) < 300)
        total = sum(self.statuses.values())
        return {
            "concurrency": self.concurrency,
            "requests": total,
            "ok": ok,
            "non_2xx": total - ok,
            "statuses": dict(self.statuses),
            "req_per_s": ok / self.duration_s if self.duration_s else 0.0,
            **{f"p{q}_ms": float(np.percentile(lat, q)) for q in (50, 90, 95, 99)},
            "max_ms": float(lat.max()),
        }


async def closed_loop(
    url: str,
    payloads: list[Any],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    timeout_s: float = 30.0,
) -> StepResult:
    """POST JSON payloads (rotating, so no cache can flatter the numbers) with `concurrency` in flight."""
    bodies = [json.dumps(p).encode() for p in payloads]
    rotation = itertools.cycle(bodies)
    headers = {"content-type": "application/json"}
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    result = StepResult(concurrency, duration_s)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:

        async def user() -> None:
            while (sent := time.perf_counter()) < stop_at:
                try:
                    async with session.post(url, data=next(rotation), headers=headers) as response:
                        await response.read()
                        status = str(response.status)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status = type(exc).__name__
                done = time.perf_counter()
                if sent >= measure_from and done <= stop_at:
                    result.latencies_ms.append((done - sent) * 1000)
                    result.statuses[status] += 1

        await asyncio.gather(*(user() for _ in range(concurrency)))
    return result
