"""The heap trimmer gives memory that many small freed allocations left in glibc's heap back to the
operating system, and only looks at the resident set now and then."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

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


def test_a_settled_heap_keeps_its_start_up_objects_out_of_collections_until_refrozen():
    """In a fresh interpreter (freezing is process-wide): what is alive when the worker settles is not
    collected, even once it becomes a garbage cycle, until `refreeze_heap` (after a reload's retired
    models are done); the youngest generation's threshold is the setting."""
    code = """
import gc, weakref
from serving.memory import refreeze_heap, settle_heap
settle_heap(0)
assert gc.get_freeze_count() == 0 and gc.get_threshold()[0] == 700
class Model: pass
model = Model(); model.itself = model; probe = weakref.ref(model)
settle_heap(50_000)
assert gc.get_threshold()[0] == 50_000 and gc.get_freeze_count() > 0
del model
gc.collect()
assert probe() is not None, "a frozen cycle was collected"
refreeze_heap()
assert probe() is None, "refreezing left the retired cycle alive"
assert gc.get_freeze_count() > 0
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
