"""Adaptive batching: items from concurrent requests for one model are merged into one ORT call.

A single worker task per model takes whatever is queued (up to `max_batch_size` items), waiting at most
`max_wait_ms` for more only when the queue is nearly empty. While a batch runs, new requests pile up
and form the next batch, so the batch size follows the load: 1 when idle, large under pressure. With
`slots` > 1, that many batches run at once (each ONNX Runtime call on its share of the threads); the
next batch is formed only once a slot is free, so batches still grow with the load.
Each item carries its own future, so answers always go back to the request and position they came from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from serving.errors import Overloaded

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.sizes[size] = self.sizes.get(size, 0) + 1

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        fn: Callable[[list[In]], list[Out]],
        max_batch_size: int = 64,
        max_wait_ms: float = 2.0,
        max_queue: int = 4096,
        on_batch: Callable[[int, float], None] | None = None,
        slots: int = 1,
    ) -> None:
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        # `slots` inferences at a time per model (usually one: ORT already uses all its intra-op threads)
        self.slots = slots
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="ort")
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    def _ensure_worker(self) -> asyncio.Queue[tuple[In, asyncio.Future[Out]]]:
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run(self._queue))
        return self._queue

    async def submit(self, items: list[In]) -> list[Out]:
        if self._closed:
            raise Overloaded("this model was just replaced; retry")
        queue = self._ensure_worker()
        if queue.qsize() + len(items) > self.max_queue:
            raise Overloaded(f"server is at capacity ({queue.qsize()} items queued); retry later")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            queue.put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    async def _collect(
        self, queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]]
    ) -> list[tuple[In, asyncio.Future[Out]]]:
        batch = [await queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self, queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]]) -> None:
        free = asyncio.Semaphore(self.slots)
        while True:
            await free.acquire()
            batch = await self._collect(queue)
            # Requests whose client went away are dropped before they cost compute.
            batch = [(item, fut) for item, fut in batch if not fut.done()]
            if not batch:
                free.release()
                continue
            if self.slots == 1:
                await self._execute(batch)
                free.release()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)

            def done(finished: asyncio.Task[None]) -> None:
                self._running.discard(finished)
                free.release()

            task.add_done_callback(done)

    async def _execute(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        """One ONNX Runtime call for the batch; its results (or its error) to each item's future."""
        started = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.fn, [item for item, _ in batch]
            )
            if len(results) != len(batch):
                raise RuntimeError(f"predictor returned {len(results)} results for {len(batch)} inputs")
        except Exception as exc:  # fail this batch's requests, keep serving the next ones
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.stats.record(len(batch))
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - started)
        for (_, fut), result in zip(batch, results):
            if not fut.done():
                fut.set_result(result)

    def close(self) -> None:
        """Stop the worker; anything still queued is answered 503 (retry), later submits too."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(Overloaded("this model was just replaced; retry"))
        self._executor.shutdown(wait=False, cancel_futures=True)
