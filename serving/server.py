"""The model server: the runtime's models, each with its batcher, a pool for pre-processing, hot
reload and readiness. No HTTP and no BentoML here: the ASGI app (serving/app.py) serves it, the
BentoML service (serving/service.py) owns one per worker, and tests run one in-process."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from serving.batching import MicroBatcher
from serving.runtime import LoadedModel, Runtime
from serving.settings import Settings

# Per model: called after every batch with (items, seconds); the service feeds its metrics with it.
BatchObserver = Callable[[str], Callable[[int, float], None] | None]


class ModelServer:
    def __init__(self, settings: Settings, runtime: Runtime | None = None, observer: BatchObserver | None = None) -> None:
        self.settings = settings
        self.runtime = runtime or Runtime(settings)
        self.observer = observer
        # Decoding and resizing run here, beside (not inside) the batchers' inference threads.
        self.prepare_threads = os.cpu_count() or 2
        self.prepare_pool = ThreadPoolExecutor(max_workers=self.prepare_threads, thread_name_prefix="prepare")
        self._reload_lock = asyncio.Lock()
        for model in self.runtime.models.values():
            self.attach_batcher(model)

    def attach_batcher(self, model: LoadedModel) -> None:
        model.batcher = MicroBatcher(
            model.task.run,
            max_batch_size=self.settings.batch_limit(model.manifest.modality, model.session_info.device),
            max_wait_ms=self.settings.max_wait_ms,
            max_queue=self.settings.max_queue,
            on_batch=self.observer(model.name) if self.observer else None,
        )

    def ready(self) -> bool:
        """/readyz: not until at least one model serves; with ready_policy "all" (the default), also
        not while a model of the repository was refused and none of its versions serves (a bad model
        halts a rolling update). A refused new version whose old one keeps serving after a reload
        does not take a serving pod out."""
        if not self.runtime.models:
            return False
        return self.settings.ready_policy == "any" or not self.runtime.broken

    async def reload(self) -> dict[str, Any]:
        """Swap in the models that changed on disk (see Runtime.reload); new models get their batcher
        before they are published. A replaced model's batcher keeps running until every request
        already admitted to it is answered: it is closed after the request timeout, by which time
        none can be waiting. The work is shielded: a client that gives up (or the request timeout)
        does not leave a reload half done."""
        return await asyncio.shield(asyncio.ensure_future(self._reload()))

    async def _reload(self) -> dict[str, Any]:
        async with self._reload_lock:
            report, retired = await asyncio.to_thread(self.runtime.reload, self.attach_batcher)
            loop = asyncio.get_running_loop()
            for old in retired:
                loop.call_later(self.settings.timeout_s + 1, old.batcher.close)
            return report

    def close(self) -> None:
        for model in self.runtime.models.values():
            if model.batcher is not None:
                model.batcher.close()
        self.prepare_pool.shutdown(wait=False, cancel_futures=True)
