"""The heap trimmer gives memory that many small freed allocations left in glibc's heap back to the
operating system, and only looks at the resident set now and then."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from serving.memory import HeapTrimmer

pytestmark = pytest.mark.fast

# Run in a fresh interpreter: a long-lived process (the test session) has free heap to reuse, so
# new allocations would not grow it and there would be nothing to show.
SCENARIO = """
import asyncio, json
from serving.memory import HeapTrimmer, resident_bytes

trimmer = HeapTrimmer(growth=16 * 2**20, every=0.0)

async def scenario():
    trimmer.after_request()  # the first look sets the floor
    await asyncio.sleep(0.05)
    before = resident_bytes()
    # 1 KB objects come from malloc (Python keeps only objects up to 512 bytes in its own arenas)
    blocks = [bytes(1000) + bytes([i % 256]) for i in range(100_000)]
    keep = blocks[-1:]  # the heap's top stays in use, so the heap cannot shrink by itself
    del blocks
    grown = resident_bytes()
    trimmer.after_request()
    for _ in range(100):
        await asyncio.sleep(0.02)
        if not trimmer.running and trimmer.trims:
            break
    return {"trim": trimmer.trim is not None, "trims": trimmer.trims, "before": before,
            "grown": grown, "after": resident_bytes(), "kept": len(keep)}

print(json.dumps(asyncio.run(scenario())))
"""


def test_freed_heap_memory_goes_back_after_a_request():
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=120, check=True
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    if not seen["trim"]:
        pytest.skip("not glibc: nothing to trim")
    before, grown, after = seen["before"], seen["grown"], seen["after"]
    assert seen["trims"] == 1
    assert grown - before > 50 * 2**20, "the freed objects did not stay in the heap; nothing to show"
    assert after - before < (grown - before) / 2, (before, grown, after)


def test_no_look_between_intervals():
    trimmer = HeapTrimmer(every=3600.0)

    async def scenario() -> None:
        trimmer.after_request()
        floor = trimmer.floor
        trimmer.floor = 1  # a look now would see huge growth and trim
        trimmer.after_request()
        assert trimmer.floor == 1 and not trimmer.running and floor

    asyncio.run(scenario())
