"""Overload and shutdown, against a real server over the tiny models:

- a burst at 10x the measured capacity is refused fast with 429 (BentoML's concurrency limit) or 503
  (the batcher's queue limit) and a message; every admitted request answers what it answers alone,
  nothing else fails, and latency is back to the baseline soon after;
- SIGTERM to `bentoml serve` under load lets every request sent before it finish with its answer.

Times are asserted loosely (a shared 2-core box) and relative to each other where possible;
benchmarks/overload.py measures the same burst on the real models.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from benchmarks.overload import (
    REFUSALS,
    ROUTE,
    SCORE_TOLERANCE,
    Outcome,
    alone,
    answer_difference,
    overload_run,
    refusal_message,
    send,
    session,
    text_batches,
)
from tests.conftest import start_server

LIMIT = 8  # requests in flight (or their items queued) that the server admits
TEXTS_PER_REQUEST = 32


@pytest.mark.parametrize(
    "setting, value, refusal",
    [
        ("TUNESERVE_MAX_CONCURRENCY", str(LIMIT), 429),
        ("TUNESERVE_MAX_QUEUE", str(LIMIT * TEXTS_PER_REQUEST), 503),
    ],
    ids=["max-concurrency", "max-queue"],
)
def test_burst_far_above_capacity_is_refused_fast_and_admitted_requests_answer_correctly(
    tiny_repository, tmp_path, setting, value, refusal
):
    payloads = text_batches("intent", TEXTS_PER_REQUEST, 8)
    with start_server(tiny_repository, tmp_path, **{setting: value}) as server:
        result = overload_run(
            server.url, payloads, LIMIT, factor=10, capacity_seconds=2, burst_seconds=2, recovery_limit_s=30
        )
        log = server.log()
    burst, recovery = result["burst"], result["recovery"]
    context = f"{result}\n{log[-3000:]}"
    # every request got an HTTP answer: no reset, no timeout, no 5xx but the refusal
    assert burst["no_response"] == 0 and burst["other_5xx"] == 0, context
    assert set(burst["statuses"]) == {"200", str(refusal)}, context
    # the burst really was far above capacity, and each refusal says why
    assert burst["refused"] > 2 * burst["admitted"] > 0, context
    assert burst["refusals_without_message"] == 0, context
    assert burst["admitted_correct"] == burst["admitted"], context
    # refused fast: well under what an admitted request takes, and under a second in absolute terms
    assert burst["refused_p50_ms"] < burst["admitted_p50_ms"] / 5 and burst["refused_p99_ms"] < 1000, context
    assert recovery["recovered_s"] is not None and recovery["recovered_s"] < 15, context


async def _load_then_sigterm(
    server, payloads, users: int, before_s: float, after_s: float
) -> tuple[list[Outcome], float]:
    """`users` clients in a closed loop; SIGTERM to the `bentoml serve` process (the CLI, leader of
    the process group) after `before_s`; each client stops at its first failure or `after_s` later."""
    url, outcomes, signalled = server.url + ROUTE, [], []

    async def user(client, first: int) -> None:
        n = first
        while not signalled or time.perf_counter() < signalled[0] + after_s:
            outcomes.append(await send(client, url, payloads, n % len(payloads)))
            n += 1
            if outcomes[-1].status != 200:
                return

    async def terminate() -> None:
        await asyncio.sleep(before_s)
        signalled.append(time.perf_counter())
        os.kill(server.proc.pid, signal.SIGTERM)

    async with session(users, timeout_s=60) as client:
        await asyncio.gather(terminate(), *(user(client, i) for i in range(users)))
    return outcomes, signalled[0]


def test_sigterm_lets_requests_in_flight_finish(tiny_repository, tmp_path):
    payloads = text_batches("intent", TEXTS_PER_REQUEST, 8)
    with start_server(tiny_repository, tmp_path) as server:
        reference, _ = asyncio.run(alone(server.url + ROUTE, payloads, passes=1))
        outcomes, signalled = asyncio.run(
            _load_then_sigterm(server, payloads, users=16, before_s=1.5, after_s=3)
        )
        exit_code = server.proc.wait(timeout=60)
        exited_s = time.perf_counter() - signalled
        log = server.log()
    before = [o for o in outcomes if o.sent < signalled]
    context = (
        f"exit {exit_code} after {exited_s:.1f} s\n"
        + "\n".join(map(str, (o for o in outcomes if o.status != 200)))
        + f"\n{log[-3000:]}"
    )
    # the signal landed while requests were being served
    assert sum(o.done > signalled for o in before) > 0, context
    for o in before:
        assert o.error is None, context  # no reset connection, no timeout
        if o.status == 200:
            assert answer_difference(o.body["predictions"], reference[o.payload]) < SCORE_TOLERANCE, context
        else:
            assert o.status in REFUSALS and refusal_message(o.body), context
    assert exit_code == 0, context
