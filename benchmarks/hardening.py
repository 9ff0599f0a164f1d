"""Hardening: slow, greedy and malformed clients against a real `bentoml serve`, on loopback only.

One server over the model repository; the worker is found among this process's descendants (its
command line runs `_bentoml_impl.worker.service`) for its resident memory and open file descriptors.
In order:

1. warm-up with the models' sample requests; the worker's resident memory after it;
2. decode bombs that fit the body limit (long thin PNGs, a PNG and a JPEG of many megapixels, FLACs
   of many channels at high rates, 256 texts of 20,000 characters), each sent alone a few times:
   status, time to the answer, the worker's peak memory above where it started; an ordinary request
   as large as the text bomb's model input (256 texts that each fill max_length), for the model's
   own time on that shape; then all the bombs at once, and the worker's memory a few seconds later
   against the one after warm-up;
3. oversized heads: a 2 MiB header value, 100,000 headers, and as many short headers as fit in
   TUNESERVE_MAX_HEADER_KB (over TUNESERVE_MAX_HEADERS): status and time to the refusal;
4. slow bodies: many connections send a POST's headers, then one body byte every few seconds;
   meanwhile an ordinary request is timed again and again; then how long until the server closed
   them (TUNESERVE_BODY_GRACE_S, TUNESERVE_BODY_MIN_RATE_KB);
5. slowloris: thousands of unfinished heads (RLIMIT_NOFILE raised to its hard limit first), once
   from one address (TUNESERVE_MAX_CONNECTIONS_PER_CLIENT refuses the excess with 503) and once
   spread over several loopback addresses (all held): time until the server closed each one against
   TUNESERVE_HEADER_TIMEOUT_S, the worker's open descriptors before, during and after, and an
   ordinary request from another address meanwhile;
6. /metrics series before 1,000 requests to random paths (/<uuid>, /v1/<uuid>,
   /v2/models/<uuid>/infer), after the first of each kind, and after all of them.

Every measurement is recorded with its target and whether it met it. Writes
benchmarks/results/hardening.{json,md}. Run: `python benchmarks/hardening.py [--repository DIR]`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import OtherLoad, server, tuneserve_server, write_results
from benchmarks.report import hardening as render_checks
from serving.loadtest.payloads import Payload, builtin_payloads, json_payload
from serving.loadtest.server_metrics import scrape
from serving.settings import Settings

LOOPBACK = "127.0.0.1"
TEXT_ROUTE, IMAGE_ROUTE, AUDIO_ROUTE = "/v1/text/classify", "/v1/image/classify", "/v1/audio/classify"
MIB = 2**20
# Targets.
ANSWER_MS = 1000.0  # an ordinary request while under attack, and every bomb
REFUSAL_MS = 100.0  # an oversized head
GROWTH_BYTES = 100 * MIB  # the worker's peak memory above where a bomb found it
SETTLE_RATIO = 1.2  # memory after a burst of bombs, against after warm-up
# The server's guard checks a body's rate once a second after the grace period, and a head's
# deadline is one timer per connection: one second of slack on either.
CLOSE_SLACK_S = 1.0
# Descriptors the worker may hold after an attack beyond those before it (its own files, logs and
# sockets come and go with ordinary requests).
FD_SLACK = 16


# --- the worker process ----------------------------------------------------------------------------


def worker_pid() -> int:
    """The BentoML worker of the server this process started (the only one: one server at a time,
    one worker)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    mine, frontier = set(), [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in mine]
        mine.update(children)
        frontier += children
    for pid in sorted(mine):
        try:
            if b"_bentoml_impl.worker.service" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise RuntimeError("no BentoML worker among this process's descendants")


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak since the last `reset_peak`) in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def reset_peak(pid: int) -> None:
    """Start VmHWM afresh at the current RSS (Linux's clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_fd_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (the server, started later, inherits it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --- checks -------------------------------------------------------------------------------------------


def check(name: str, value: float | int | None, unit: str, op: str, target: Any) -> dict:
    """One measurement against its target. `op`: '<=' or '==' (a number), 'in' (a list of statuses,
    where '4xx' stands for any client error). No measurement fails."""
    if value is None:
        ok = False
    elif op == "<=":
        ok = value <= target
    elif op == "==":
        ok = value == target
    else:
        ok = value in target or ("4xx" in target and 400 <= value < 500)
    return {"check": name, "value": value, "unit": unit, "op": op, "target": target, "pass": bool(ok)}


def p50(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --- requests -------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None  # None: no HTTP answer (the error says what happened instead)
    ms: float
    error: str = ""


async def send(session: aiohttp.ClientSession, url: str, payload: Payload) -> Answer:
    started = time.perf_counter()
    try:
        async with session.post(url, **payload.request_kwargs()) as response:
            text = await response.text()
            error = ""
            if response.status != 200:
                try:
                    error = str(json.loads(text).get("error", ""))[:200]
                except (ValueError, AttributeError):
                    error = text[:200]
            return Answer(response.status, (time.perf_counter() - started) * 1000, error)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Answer(None, (time.perf_counter() - started) * 1000, type(exc).__name__)


def client(source: str = LOOPBACK, timeout_s: float = 60) -> aiohttp.ClientSession:
    """A session whose connections come from `source` (any 127.x address is this machine)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64, local_addr=(source, 0)),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


def ordinary(model: str) -> Payload:
    return json_payload({"model": model, "texts": ["I lost my card"]})


async def probe(url: str, payload: Payload, source: str, every_s: float, until: float) -> list[Answer]:
    """The ordinary request, one at a time, every `every_s` until `until` (monotonic)."""
    answers = []
    async with client(source, timeout_s=30) as session:
        while time.monotonic() < until:
            answers.append(await send(session, url, payload))
            await asyncio.sleep(every_s)
    return answers


def probe_summary(answers: list[Answer]) -> dict:
    fine = [a.ms for a in answers if a.status == 200]
    return {
        "samples": len(answers),
        "statuses": dict(Counter(str(a.status or a.error) for a in answers)),
        "p50_ms": p50(fine),
        "max_ms": max(fine, default=None),
    }


# --- held connections (slow bodies, slowloris) ----------------------------------------------------------


@dataclass
class Held:
    status: int | None  # what the server answered before closing, if anything
    closed_s: float | None  # from this connection's start to the server's close; None: still open
    reset: bool = False


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter, float]


async def connect(port: int, source: str) -> Stream | None:
    """A connection from `source` (any 127.x address is this machine) and when it was opened."""
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, port, local_addr=(source, 0))
    except OSError:
        return None
    return reader, writer, time.monotonic()


async def hold(
    stream: Stream | None, head: bytes, drip: bytes, every_s: float, limit_s: float
) -> Held | None:
    """Sends `head`, then `drip` every `every_s` until the server closes the connection or `limit_s`
    passes. None for a connection that could not be opened."""
    if stream is None:
        return None
    reader, writer, started = stream
    data, reset, closed = b"", False, None
    try:
        writer.write(head)
        while time.monotonic() - started < limit_s:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), every_s)
            except TimeoutError:
                writer.write(drip)
                continue
            if not chunk:
                closed = time.monotonic() - started
                break
            data += chunk
    except (ConnectionError, OSError):
        closed, reset = time.monotonic() - started, True
    finally:
        writer.close()
    status = int(data.split()[1]) if data.startswith(b"HTTP/") else None
    return Held(status, closed, reset)


def held_summary(held: list[Held | None]) -> dict:
    opened = [h for h in held if h is not None]
    closed = [h.closed_s for h in opened if h.closed_s is not None]

    def outcome(h: Held) -> str:
        if h.status:
            return str(h.status)
        return "reset" if h.reset else "still open" if h.closed_s is None else "closed, no answer"

    return {
        "attempted": len(held),
        "opened": len(opened),
        "outcomes": dict(Counter(outcome(h) for h in opened)),
        "closed_min_s": min(closed, default=None),
        "closed_p50_s": p50(closed),
        "closed_max_s": max(closed, default=None),
    }


@dataclass
class Attack:
    sources: list[str]
    held: list[Held | None]
    probes: dict[str, list[Answer]]  # the ordinary request's answers, by the address it came from
    opening_s: float
    fds: tuple[int, int, int]  # the worker's open descriptors before, during and after
    rss: tuple[int, int, int]  # its resident bytes at the same moments

    def summary(self) -> dict:
        return {
            "sources": self.sources,
            "opening_s": self.opening_s,
            "connections": held_summary(self.held),
            "ordinary": {source: probe_summary(answers) for source, answers in self.probes.items()},
            **{f"worker_fds_{when}": n for when, n in zip(("before", "during", "after"), self.fds)},
            **{f"worker_rss_{when}_bytes": n for when, n in zip(("before", "during", "after"), self.rss)},
        }


async def attack(
    port: int,
    sources: list[str],
    count: int,
    head: bytes,
    drip: bytes,
    every_s: float,
    limit_s: float,
    probe_url: str,
    probe_payload: Payload,
    probe_sources: list[str],
    probe_for_s: float,
    pid: int,
) -> Attack:
    """`count` connections spread over `sources`, opened in batches (a burst of thousands of SYNs
    would overflow the listen backlog and time the client's retries instead), then held; meanwhile
    the ordinary request is probed from each of `probe_sources` for `probe_for_s`. The worker is
    looked at a second before, once all are open, and a second after the last is closed."""
    await asyncio.sleep(1)
    fds, rss = [open_fds(pid)], [memory(pid)["VmRSS"]]
    started = time.monotonic()
    streams: list[Stream | None] = []
    for first in range(0, count, 200):
        streams += await asyncio.gather(
            *(connect(port, sources[i % len(sources)]) for i in range(first, min(count, first + 200)))
        )
    opening_s = time.monotonic() - started
    tasks = [asyncio.create_task(hold(s, head, drip, every_s, limit_s)) for s in streams]
    await asyncio.sleep(0.5)
    fds.append(open_fds(pid))
    rss.append(memory(pid)["VmRSS"])
    until = time.monotonic() + probe_for_s
    probes = await asyncio.gather(*(probe(probe_url, probe_payload, s, 0.5, until) for s in probe_sources))
    held = list(await asyncio.gather(*tasks))
    await asyncio.sleep(1)
    fds.append(open_fds(pid))
    rss.append(memory(pid)["VmRSS"])
    return Attack(
        sources,
        held,
        dict(zip(probe_sources, probes)),
        opening_s,
        (fds[0], fds[1], fds[2]),
        (rss[0], rss[1], rss[2]),
    )


def descriptor_checks(label: str, run: Attack, held: int) -> list[dict]:
    """The worker's descriptors: one per held connection during the attack, back to before after it."""
    before, during, after = run.fds
    return [
        check(f"{label}: worker descriptors during", during, "count", "<=", before + held + FD_SLACK),
        check(f"{label}: worker descriptors after", after, "count", "<=", before + FD_SLACK),
    ]


# --- oversized heads ----------------------------------------------------------------------------------


def refuse_head(port: int, head: bytes) -> dict:
    """Sends `head` (request line and headers) while reading what comes back: the status, and ms from
    the first byte sent to the status line (or to the connection's end when none came)."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as s:

        def push() -> None:
            try:
                s.sendall(head)
            except OSError:
                pass  # the server closed before all of it was sent: expected

        started = time.perf_counter()
        threading.Thread(target=push, daemon=True).start()
        data, error = b"", ""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            error = type(exc).__name__
        elapsed = (time.perf_counter() - started) * 1000
    status = int(data.split()[1]) if data.startswith(b"HTTP/") else None
    return {"bytes": len(head), "status": status, "ms": elapsed, "error": error}


def heads(settings: Settings) -> dict[str, bytes]:
    start = b"GET /v1/models HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    line = b"x-h%06d: 1\r\n"
    fitting = (settings.max_header_kb * 1024 - len(start) - 2) // len(line % 0)
    return {
        "value_2mib": start + b"x-big: " + b"a" * (2 * MIB) + b"\r\n\r\n",
        "headers_100000": start + b"".join(line % i for i in range(100_000)) + b"\r\n",
        f"headers_{fitting}": start + b"".join(line % i for i in range(fitting)) + b"\r\n",
    }


# --- bombs ----------------------------------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    return cv2.imencode(".png", np.full((height, width, 3), 128, np.uint8))[1].tobytes()


def jpeg(width: int, height: int) -> bytes:
    """A picture with detail everywhere (stripes in three directions), so it decodes as a real one."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x // 23) % 256, (y // 17) % 256, ((x + y) // 31) % 256], -1).astype(np.uint8)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def flac(rate: int, channels: int, seconds: float, tone: bool) -> bytes:
    """16-bit FLAC; silence compresses to almost nothing, so a header can claim any size."""
    frames = int(rate * seconds)
    mono = (
        (0.3 * 32767 * np.sin(2 * np.pi * 440 * np.arange(frames) / rate)).astype(np.int16)
        if tone
        else np.zeros(frames, np.int16)
    )
    out = io.BytesIO()
    sf.write(out, np.repeat(mono[:, None], channels, axis=1), rate, format="FLAC", subtype="PCM_16")
    return out.getvalue()


def long_text(i: int, chars: int) -> str:
    return (f"card {i} lost abroad, please help " * (chars // 20))[:chars]


def files(field: str, model: str, items: list[tuple[str, bytes, str]]) -> Payload:
    return Payload(files=tuple(items), file_field=field, fields=(("model", model),))


@dataclass(frozen=True)
class Bomb:
    name: str
    route: str
    payload: Payload
    expect: list[Any]  # statuses that count as answered ('4xx': any client error)


def bombs(args: argparse.Namespace) -> list[Bomb]:
    strip = png(10_000, 1)
    answered: list[Any] = [200, "4xx"]
    return [
        Bomb(
            "10000x1 PNG",
            IMAGE_ROUTE,
            files("images", args.image_model, [("strip.png", strip, "image/png")]),
            answered,
        ),
        Bomb(
            "eight 10000x1 PNGs, one request",
            IMAGE_ROUTE,
            files("images", args.image_model, [(f"strip{i}.png", strip, "image/png") for i in range(8)]),
            answered,
        ),
        Bomb(
            "5000x4000 PNG",
            IMAGE_ROUTE,
            files("images", args.image_model, [("big.png", png(5000, 4000), "image/png")]),
            ["4xx"],
        ),
        Bomb(
            "6000x4000 JPEG",
            IMAGE_ROUTE,
            files("images", args.image_model, [("big.jpg", jpeg(6000, 4000), "image/jpeg")]),
            answered,
        ),
        Bomb(
            "FLAC 30 s, 384 kHz, 8 channels (silence)",
            AUDIO_ROUTE,
            files("audio", args.audio_model, [("high.flac", flac(384_000, 8, 30, False), "audio/flac")]),
            ["4xx"],
        ),
        Bomb(
            "FLAC 30 s, 48 kHz, 8 channels (a tone)",
            AUDIO_ROUTE,
            files("audio", args.audio_model, [("wide.flac", flac(48_000, 8, 30, True), "audio/flac")]),
            answered,
        ),
        Bomb(
            "256 texts of 20000 characters",
            TEXT_ROUTE,
            json_payload(
                {
                    "model": args.text_model,
                    "texts": [long_text(i, 20_000) for i in range(256)],
                }
            ),
            answered,
        ),
    ]


async def bomb_alone(base: str, bomb: Bomb, pid: int, repeats: int) -> dict:
    """Sent `repeats` times, one at a time; the worker's peak memory over all of them above its memory
    before the first."""
    reset_peak(pid)
    before = memory(pid)["VmHWM"]  # the resident set at the reset: the peak's own baseline
    async with client() as session:
        answers = [await send(session, base + bomb.route, bomb.payload) for _ in range(repeats)]
    after = memory(pid)
    statuses = [a.status for a in answers]
    return {
        "name": bomb.name,
        "route": bomb.route,
        "bytes": len(bomb.payload.json_body or b"") + sum(len(f[1]) for f in bomb.payload.files),
        "statuses": statuses,
        "expect": bomb.expect,
        "error": next((a.error for a in answers if a.error), ""),
        "ms": [a.ms for a in answers],
        "p50_ms": p50([a.ms for a in answers]),
        "max_ms": max(a.ms for a in answers),
        "rss_before_bytes": before,
        "rss_after_bytes": after["VmRSS"],
        "peak_bytes": after["VmHWM"],
        # the kernel's resident counts are per-CPU approximations: a peak a page below the start is none
        "growth_bytes": max(0, after["VmHWM"] - before),
    }


async def burst(base: str, all_bombs: list[Bomb], rounds: int) -> list[Answer]:
    async with client() as session:
        return list(
            await asyncio.gather(
                *(send(session, base + b.route, b.payload) for _ in range(rounds) for b in all_bombs)
            )
        )


async def warm_up(base: str, args: argparse.Namespace, rounds: int) -> list[Answer]:
    """The models' own sample requests (serving/tasks/), several times over."""
    payloads = (
        [(TEXT_ROUTE, p) for p in builtin_payloads("text/classify", args.text_model)]
        + [(IMAGE_ROUTE, p) for p in builtin_payloads("image/classify", args.image_model)]
        + [(AUDIO_ROUTE, p) for p in builtin_payloads("audio/classify", args.audio_model)]
    )
    async with client() as session:
        return [await send(session, base + route, p) for _ in range(rounds) for route, p in payloads]


async def random_paths(base: str, count: int) -> Counter[str]:
    """GETs of /<uuid> and /v1/<uuid>, POSTs to /v2/models/<uuid>/infer, in turn."""
    statuses: Counter[str] = Counter()
    async with client() as session:
        for i in range(count):
            name = uuid.uuid4()
            path = (f"/{name}", f"/v1/{name}", f"/v2/models/{name}/infer")[i % 3]
            try:
                method = session.post if path.endswith("/infer") else session.get
                async with method(base + path, data=b"{}" if path.endswith("/infer") else None) as r:
                    await r.read()
                    statuses[str(r.status)] += 1
            except (aiohttp.ClientError, OSError) as exc:
                statuses[type(exc).__name__] += 1
    return statuses


def series(base: str) -> int:
    """Distinct series of /metrics (samples by name and labels)."""
    samples = scrape(base)
    return len(samples) if samples is not None else 0


# --- the run --------------------------------------------------------------------------------------------


def memory_phase(base: str, pid: int, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Warm-up, every bomb alone, then all at once; the worker's memory throughout."""
    checks = []
    warm = asyncio.run(warm_up(base, args, rounds=5))
    time.sleep(2)
    rss_warm = memory(pid)["VmRSS"]
    all_bombs = bombs(args)
    alone = []
    for bomb in all_bombs:
        row = asyncio.run(bomb_alone(base, bomb, pid, args.repeats))
        alone.append(row)
        print(
            f"  {row['name']:42} {row['statuses']}  max {row['max_ms']:.0f} ms  peak +{row['growth_bytes'] / MIB:.0f} MiB"
            + (f"  ({row['error']})" if row["error"] else ""),
            flush=True,
        )
        statuses = [check("", s, "status", "in", bomb.expect) for s in row["statuses"]]
        worst = next((c for c in statuses if not c["pass"]), statuses[0])
        checks += [
            {**worst, "check": f"{bomb.name}: status"},
            check(f"{bomb.name}: slowest answer", row["max_ms"], "ms", "<=", ANSWER_MS),
            check(f"{bomb.name}: worker peak growth", row["growth_bytes"], "bytes", "<=", GROWTH_BYTES),
        ]
    # An ordinary request as large as the text bomb's model input (every text fills max_length): the
    # model's own time for that shape, apart from what the length of the texts adds.
    full = Bomb(
        "256 ordinary texts of 1000 characters (each fills max_length)",
        TEXT_ROUTE,
        json_payload({"model": args.text_model, "texts": [long_text(i, 1000) for i in range(256)]}),
        [200],
    )
    reference = asyncio.run(bomb_alone(base, full, pid, args.repeats))
    print(f"  {reference['name']:42} {reference['statuses']}  max {reference['max_ms']:.0f} ms", flush=True)
    reset_peak(pid)
    answers = asyncio.run(burst(base, all_bombs, args.burst_rounds))
    peak = memory(pid)["VmHWM"]
    time.sleep(args.settle_s)
    rss_settled = memory(pid)["VmRSS"]
    checks += [
        check(
            "every bomb at once: 5xx or no answer",
            sum(a.status is None or a.status >= 500 for a in answers),
            "count",
            "==",
            0,
        ),
        check(
            f"worker memory {args.settle_s:g} s after the burst / after warm-up",
            rss_settled / rss_warm,
            "ratio",
            "<=",
            SETTLE_RATIO,
        ),
    ]
    print(
        f"  RSS after warm-up {rss_warm / MIB:.0f} MiB, burst peak {peak / MIB:.0f} MiB, "
        f"{args.settle_s:g} s later {rss_settled / MIB:.0f} MiB",
        flush=True,
    )
    return {
        "warm_up": {"requests": len(warm), "statuses": dict(Counter(str(a.status) for a in warm))},
        "reference": reference,
        "bombs": alone,
        "memory": {
            "rss_after_warm_up_bytes": rss_warm,
            "burst_requests": len(answers),
            "burst_statuses": dict(Counter(str(a.status or a.error) for a in answers)),
            "burst_max_ms": max(a.ms for a in answers),
            "burst_peak_bytes": peak,
            "rss_after_burst_bytes": rss_settled,
            "after_vs_warm_up": rss_settled / rss_warm,
        },
    }, checks


def heads_phase(
    base: str, port: int, args: argparse.Namespace, settings: Settings
) -> tuple[dict, list[dict]]:
    checks, rows = [], {}
    for name, head in heads(settings).items():
        row = rows[name] = refuse_head(port, head)
        print(
            f"  {name:16} {row['bytes']:>9} bytes: {row['status']} in {row['ms']:.1f} ms {row['error']}",
            flush=True,
        )
        count = name.split("_")[1]
        label = "a 2 MiB header value" if name == "value_2mib" else f"{count} headers"
        checks += [
            check(f"{label}: status", row["status"], "status", "in", [431, 400]),
            check(f"{label}: time to the refusal", row["ms"], "ms", "<=", REFUSAL_MS),
        ]
    after = asyncio.run(
        probe(base + TEXT_ROUTE, ordinary(args.text_model), LOOPBACK, 0.1, time.monotonic() + 0.5)
    )
    checks.append(
        check("ordinary requests after them: not 200", sum(a.status != 200 for a in after), "count", "==", 0)
    )
    return rows, checks


def slow_body_phase(
    base: str, port: int, pid: int, args: argparse.Namespace, settings: Settings
) -> tuple[dict, list[dict]]:
    head = (
        f"POST {TEXT_ROUTE} HTTP/1.1\r\nhost: {LOOPBACK}\r\ncontent-type: application/json\r\n"
        f"content-length: {args.slow_body_length}\r\n\r\n"
    ).encode()
    run = asyncio.run(
        attack(
            port,
            [LOOPBACK],
            args.slow_bodies,
            head,
            b" ",
            args.drip_s,
            settings.body_grace_s + 20,
            base + TEXT_ROUTE,
            ordinary(args.text_model),
            [LOOPBACK],
            max(1.0, settings.body_grace_s - 2),  # while every slow body is still open
            pid,
        )
    )
    probes = run.probes[LOOPBACK]
    result = run.summary()
    n = args.slow_bodies
    checks = [
        check(
            f"{n} slow bodies: ordinary request p50",
            result["ordinary"][LOOPBACK]["p50_ms"],
            "ms",
            "<=",
            ANSWER_MS,
        ),
        check(
            f"{n} slow bodies: ordinary request max",
            result["ordinary"][LOOPBACK]["max_ms"],
            "ms",
            "<=",
            ANSWER_MS,
        ),
        check(
            f"{n} slow bodies: ordinary requests not 200",
            sum(a.status != 200 for a in probes),
            "count",
            "==",
            0,
        ),
        check(
            f"{n} slow bodies: answered 408 and closed",
            result["connections"]["outcomes"].get("408", 0),
            "count",
            "==",
            n,
        ),
        check(
            f"{n} slow bodies: last closed by the server (after its start)",
            result["connections"]["closed_max_s"],
            "s",
            "<=",
            settings.body_grace_s + CLOSE_SLACK_S,
        ),
        *descriptor_checks(f"{n} slow bodies", run, n),
    ]
    print(f"  {result}", flush=True)
    return result, checks


def slowloris_phase(
    base: str, port: int, pid: int, args: argparse.Namespace, settings: Settings
) -> tuple[dict, list[dict]]:
    """From one address (the per-address cap answers the excess 503; an ordinary client of another
    address, and one of the same address, meanwhile), then spread over several (all held)."""
    soft, hard = raise_fd_limit()
    partial = f"GET /v1/models HTTP/1.1\r\nhost: {LOOPBACK}\r\nx-slow: ".encode()
    result: dict[str, Any] = {"rlimit_nofile": [soft, hard]}
    checks = []
    elsewhere = "127.0.0.200"
    spread = [f"127.0.0.{2 + i}" for i in range(args.addresses)]
    for name, sources, probe_sources in (
        ("one_address", [LOOPBACK], [elsewhere, LOOPBACK]),
        ("spread", spread, [LOOPBACK]),
    ):
        run = asyncio.run(
            attack(
                port,
                sources,
                args.slowloris,
                partial,
                b"a",
                args.drip_s,
                settings.header_timeout_s + 20,
                base + TEXT_ROUTE,
                ordinary(args.text_model),
                probe_sources,
                settings.header_timeout_s / 2,
                pid,
            )
        )
        result[name] = run.summary()
        connections = result[name]["connections"]
        print(f"  {name}: {result[name]}", flush=True)
        timed = [h for h in run.held if h is not None and h.status != 503]
        last = (
            None
            if any(h.closed_s is None for h in timed)
            else max((h.closed_s or 0 for h in timed), default=None)
        )
        held = min(connections["opened"], settings.max_connections_per_client * len(sources))
        label = f"{args.slowloris} slowloris from {len(sources)} address{'es' if len(sources) > 1 else ''}"
        probe_from = probe_sources[0]
        checks += [
            check(f"{label}: connections opened", connections["opened"], "count", "==", args.slowloris),
            check(f"{label}: held until the header timeout", len(timed), "count", "==", held),
            check(
                f"{label}: refused 503 at once",
                connections["outcomes"].get("503", 0),
                "count",
                "==",
                connections["opened"] - held,
            ),
            check(
                f"{label}: last held one closed by the server (after its start)",
                last,
                "s",
                "<=",
                settings.header_timeout_s + CLOSE_SLACK_S,
            ),
            *descriptor_checks(label, run, held),
            check(
                f"{label}: ordinary request from {probe_from}, max",
                result[name]["ordinary"][probe_from]["max_ms"],
                "ms",
                "<=",
                ANSWER_MS,
            ),
        ]
        if LOOPBACK in sources:  # a client sharing the flooded address: what the per-address cap costs it
            same = result[name]["ordinary"][LOOPBACK]
            checks.append(
                check(
                    f"{label}: ordinary requests from the same address refused 503 at once",
                    same["statuses"].get("503", 0),
                    "count",
                    "==",
                    same["samples"],
                )
            )
    return result, checks


def metrics_phase(base: str, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Series before any random path, after the first of each kind (a path under /v1 or a v2 model
    route reaches its app, which answers 404 under its route pattern: one label set each), and
    after all of them."""
    scrape(base)  # the first scrape adds the /metrics route's own series
    before = series(base)
    statuses = asyncio.run(random_paths(base, 3))
    after_first = series(base)
    statuses += asyncio.run(random_paths(base, args.random_paths - 3))
    after = series(base)
    result = {
        "statuses": dict(statuses),
        "series_before": before,
        "series_after_first_of_each": after_first,
        "series_after": after,
    }
    print(f"  {result}", flush=True)
    n = args.random_paths
    return result, [
        check(f"/metrics series after {n} random paths, against before them", after, "count", "==", before),
        check(
            f"/metrics series after {n} random paths, against after the first of each kind",
            after,
            "count",
            "==",
            after_first,
        ),
    ]


def measure(base: str, port: int, args: argparse.Namespace, settings: Settings) -> dict:
    pid = worker_pid()
    report: dict[str, Any] = {}
    checks: list[dict] = []
    print("warm-up, then decode bombs alone and all at once", flush=True)
    found, more = memory_phase(base, pid, args)
    report |= found
    checks += more
    print("oversized heads", flush=True)
    report["heads"], more = heads_phase(base, port, args, settings)
    checks += more
    print(f"{args.slow_bodies} slow bodies", flush=True)
    report["slow_bodies"], more = slow_body_phase(base, port, pid, args, settings)
    checks += more
    print(f"{args.slowloris} slowloris connections", flush=True)
    report["slowloris"], more = slowloris_phase(base, port, pid, args, settings)
    checks += more
    print(f"{args.random_paths} random paths and /metrics", flush=True)
    report["metrics"], more = metrics_phase(base, args)
    checks += more
    return {**report, "checks": checks}


def server_code() -> dict:
    """The commit the server ran from, and whether serving/ differed from it."""

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "short": git("rev-parse", "--short=10", "HEAD"),
        "serving_changed": bool(git("status", "--porcelain", "serving")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--text-model", default="intent")
    ap.add_argument("--image-model", default="surface-defects")
    ap.add_argument("--audio-model", default="keywords")
    ap.add_argument("--slow-bodies", type=int, default=300)
    ap.add_argument(
        "--slow-body-length", type=int, default=100, help="content-length the slow bodies announce"
    )
    ap.add_argument("--drip-s", type=float, default=3.0, help="seconds between the bytes of a slow client")
    ap.add_argument("--slowloris", type=int, default=2000)
    ap.add_argument("--addresses", type=int, default=4, help="loopback addresses the spread slowloris uses")
    ap.add_argument("--repeats", type=int, default=3, help="times each bomb is sent alone")
    ap.add_argument("--burst-rounds", type=int, default=2, help="copies of each bomb in the burst")
    ap.add_argument("--settle-s", type=float, default=5.0)
    ap.add_argument("--random-paths", type=int, default=1000)
    args = ap.parse_args()
    raise_fd_limit()
    settings = Settings()
    argv, port, env = tuneserve_server(Path(args.repository))
    argv += ["--host", LOOPBACK]
    others = OtherLoad()
    started, mark = time.monotonic(), others.mark()
    with server(argv, port, env) as base:
        report = measure(base, port, args, settings)
    report["other_processes_cores"] = others.cores_since(mark)
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": __import__("onnxruntime").__version__,
        },
        "repository": str(args.repository),
        "server_code": server_code(),
        "config": vars(args),
        "limits": {
            name: getattr(settings, name)
            for name in (
                "header_timeout_s",
                "max_header_kb",
                "max_headers",
                "body_min_rate_kb",
                "body_grace_s",
                "max_connections_per_client",
                "max_body_mb",
                "max_file_mb",
                "max_image_megapixels",
            )
        },
        "seconds": time.monotonic() - started,
        **report,
    }
    report["passed"] = sum(c["pass"] for c in report["checks"])
    report["failed"] = [c["check"] for c in report["checks"] if not c["pass"]]
    write_results(
        "hardening",
        report,
        [f"# Hardening — `{Path(args.repository).name}`", "", *render_checks(report), ""],
    )


if __name__ == "__main__":
    main()
