"""Giving freed memory back to the operating system after large requests, and keeping the garbage
collector's pauses short.

glibc's allocator keeps memory that large requests freed (decoded images and audio, token and
activation buffers) in its heaps, so a worker's resident memory stays at its high-water mark after
a burst. `HeapTrimmer` looks at the resident set now and then (never on every request) and, when it
has grown well beyond the level of the last trim, calls `malloc_trim(0)` in a thread. Where glibc
is not the allocator (musl, macOS) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

CHECK_EVERY_S = 0.25  # at most this often the resident set is read (a few microseconds each)
GROWTH_BYTES = 32 * 1024 * 1024  # growth over the last trimmed level that is worth a trim


def _malloc_trim() -> Callable[[], None] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def resident_bytes() -> int:
    """This process's resident set, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HeapTrimmer:
    def __init__(self, growth: int = GROWTH_BYTES, every: float = CHECK_EVERY_S) -> None:
        self.trim = _malloc_trim()
        self.growth, self.every = growth, every
        self.floor = 0  # resident bytes after the last trim (or at the first look)
        self.next_look = 0.0
        self.running = False
        self.trailing: asyncio.TimerHandle | None = None
        self.trims = 0

    def after_request(self) -> None:
        """Called on the event loop after each request; cheap unless a look is due. A look also
        follows the last request of a burst, so its memory is not kept until the next request."""
        if self.trim is None:
            return
        loop = asyncio.get_running_loop()
        if self.trailing is None:
            self.trailing = loop.call_later(2 * self.every, self._trailing_look)
        now = time.monotonic()
        if now >= self.next_look:
            self.next_look = now + self.every
            self._look(loop)

    def _trailing_look(self) -> None:
        self.trailing = None
        self._look(asyncio.get_running_loop())

    def _look(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.running:
            return
        resident = resident_bytes()
        if not self.floor:
            self.floor = resident
        elif resident > self.floor + self.growth:
            self.running = True
            loop.run_in_executor(None, self._trim).add_done_callback(self._done)

    def _trim(self) -> int:
        assert self.trim is not None
        self.trim()
        return resident_bytes()

    def _done(self, future: asyncio.Future[int]) -> None:
        self.running = False
        if future.exception() is None:
            self.floor = future.result()
            self.trims += 1
        else:  # never expected; keep serving without trims
            log.warning("malloc_trim failed: %s", future.exception())
            self.trim = None


def settle_heap(threshold: int) -> None:
    """Once a worker's models are open: move everything alive now (modules, sessions, tokenizers,
    BentoML) out of the cyclic collector's sight, and let the youngest generation grow to `threshold`
    objects between collections. A request allocates thousands of short-lived objects; with Python's
    default (700) the collector runs every few requests, and its full collections walked the whole
    heap while every request in flight waited: they were the server's slowest answers
    (benchmarks/results/peers.md). Frozen objects are still freed by reference counting; only
    cycles among them wait for `refreeze_heap`. 0 leaves Python's defaults."""
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(threshold, middle, oldest)


def refreeze_heap() -> None:
    """After models were replaced and their last requests answered: collect what the frozen heap
    holds (cycles of the retired models included), then freeze what is alive again. Nothing
    happens where nothing was frozen."""
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
        gc.freeze()
