"""Load generation: closed loop (N requests always outstanding) and open loop (arrivals at a target
rate, constant or Poisson), over aiohttp. Latencies go into an HDR histogram, so memory stays bounded
whatever the run length.

Open-loop latency is measured from each request's *intended* send time, not from when the client got
round to sending it, so a server that stalls cannot hide its tail behind a client that waited for it
(no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from hdrh.histogram import HdrHistogram

from serving.loadtest.payloads import Payload

LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS = 1, 120_000_000, 3
PERCENTILES = (50, 90, 95, 99, 99.9)


@dataclass
class StepStats:
    """What one load step measured, after its warm-up."""

    mode: str
    load: float  # concurrency (closed) or target rate in req/s (open)
    duration_s: float = 0.0
    histogram: HdrHistogram = field(
        default_factory=lambda: HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
    )
    statuses: Counter = field(default_factory=Counter)  # HTTP status code → count
    exceptions: Counter = field(default_factory=Counter)  # exception name → count
    sent: int = 0
    dropped: int = 0  # open loop: arrivals not sent because the in-flight cap was reached (counted as errors)
    server: dict[str, Any] = field(default_factory=dict)

    def record(self, latency_s: float, status: int | None = None, exception: str | None = None) -> None:
        self.histogram.record_value(max(LOWEST_US, min(HIGHEST_US, int(latency_s * 1e6))))
        if exception is not None:
            self.exceptions[exception] += 1
        else:
            self.statuses[str(status)] += 1

    @property
    def completed(self) -> int:
        return sum(self.statuses.values()) + sum(self.exceptions.values())

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= int(s) < 300)

    @property
    def errors(self) -> int:
        return self.completed - self.ok + self.dropped

    def summary(self) -> dict[str, Any]:
        h, total = self.histogram, self.completed + self.dropped
        out: dict[str, Any] = {
            "mode": self.mode,
            "load": self.load,
            "duration_s": round(self.duration_s, 3),
            "requests": total,
            "ok": self.ok,
            "errors": self.errors,
            "error_rate": self.errors / total if total else 0.0,
            "statuses": dict(self.statuses),
            "exceptions": dict(self.exceptions),
            "dropped": self.dropped,
            "throughput_rps": self.ok / self.duration_s if self.duration_s else 0.0,
            "achieved_rps": self.sent / self.duration_s if self.duration_s else 0.0,
        }
        if self.mode == "open":
            out["target_rps"] = self.load
        for p in PERCENTILES:
            out[f"p{p:g}_ms"] = h.get_value_at_percentile(p) / 1000 if h.get_total_count() else None
        out["max_ms"] = h.get_max_value() / 1000 if h.get_total_count() else None
        out["mean_ms"] = h.get_mean_value() / 1000 if h.get_total_count() else None
        out["server"] = self.server
        return out


def run(coro):
    """Run a load coroutine on uvloop where installed (a faster client means the tool is not the bottleneck)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def _attempt(
    session: aiohttp.ClientSession, url: str, payload: Payload
) -> tuple[int | None, str | None]:
    """One request: (HTTP status, None), or (None, exception name) when no response came back."""
    try:
        async with session.post(url, **payload.request_kwargs()) as response:
            await response.read()
            return response.status, None
    except TimeoutError:
        return None, "Timeout"
    except (aiohttp.ClientError, OSError) as exc:
        return None, type(exc).__name__


async def closed_loop(
    url: str,
    payloads: list[Payload],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    max_requests: int | None = None,
    timeout_s: float = 30.0,
) -> StepStats:
    """`concurrency` users, each sending its next request when the previous one answers."""
    stats = StepStats("closed", concurrency)
    rotation = itertools.cycle(payloads)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s
    budget = itertools.count()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as session:

        async def user() -> None:
            while (sent := time.perf_counter()) < stop_at:
                measured = sent >= measure_from
                if measured and max_requests is not None and next(budget) >= max_requests:
                    return
                status, error = await _attempt(session, url, next(rotation))
                if measured:
                    stats.sent += 1
                    stats.record(time.perf_counter() - sent, status, error)

        await asyncio.gather(*(user() for _ in range(concurrency)))
    stats.duration_s = min(time.perf_counter(), stop_at) - measure_from
    return stats


def arrival_times(rate: float, duration_s: float, arrival: str, seed: int = 0) -> list[float]:
    """Intended send offsets (seconds) for one step: evenly spaced, or a Poisson process."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    if arrival == "constant":
        return [i / rate for i in range(int(rate * duration_s))]
    rng, t, out = random.Random(seed), 0.0, []
    while (t := t + rng.expovariate(rate)) < duration_s:
        out.append(t)
    return out


async def open_loop(
    url: str,
    payloads: list[Payload],
    rate: float,
    duration_s: float,
    warmup_s: float = 1.0,
    arrival: str = "poisson",
    max_requests: int | None = None,
    max_in_flight: int = 4096,
    timeout_s: float = 30.0,
) -> StepStats:
    """Requests start at their intended times whatever the server does; latency counts from then."""
    stats = StepStats("open", rate)
    rotation = itertools.cycle(payloads)
    offsets = arrival_times(rate, warmup_s + duration_s, arrival)
    if max_requests is not None:
        warm = sum(1 for o in offsets if o < warmup_s)
        offsets = offsets[: warm + max_requests]
    in_flight: set[asyncio.Task] = set()
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as session:

        async def one(intended: float, measured: bool) -> None:
            status, error = await _attempt(session, url, next(rotation))
            if measured:
                stats.record(time.perf_counter() - intended, status, error)

        start = time.perf_counter()
        for offset in offsets:
            intended = start + offset
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            measured = offset >= warmup_s
            if len(in_flight) >= max_in_flight:
                if measured:
                    stats.dropped += 1
                continue
            if measured:
                stats.sent += 1
            task = asyncio.create_task(one(intended, measured))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)
    stats.duration_s = (
        duration_s if max_requests is None else max(1e-9, (offsets[-1] - warmup_s) if offsets else 0.0)
    )
    return stats
