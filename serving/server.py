"""The model server: the runtime's models, each with its batcher, a pool for pre-processing, hot
reload and readiness. No HTTP and no BentoML here: the ASGI app (serving/app.py) serves it, the
BentoML service (serving/service.py) owns one per worker, and tests run one in-process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from serving.batching import MicroBatcher
from serving.errors import InputError, RequestError, TooManyRequests
from serving.manifest import BUILD_STATUS_FILE
from serving.memory import HeapTrimmer, refreeze_heap
from serving.runtime import LoadedModel, Runtime
from serving.settings import Settings
from serving.tasks import FileTask, ServingTask, Upload

log = logging.getLogger(__name__)

# Per model: called after every batch with (items, seconds); the service feeds its metrics with it.
BatchObserver = Callable[[str], Callable[[int, float], None] | None]


class ModelServer:
    def __init__(
        self, settings: Settings, runtime: Runtime | None = None, observer: BatchObserver | None = None
    ) -> None:
        self.settings = settings
        self.runtime = runtime or Runtime(settings)
        self.observer = observer
        # Decoding and resizing run here, beside (not inside) the batchers' inference threads.
        self.prepare_threads = os.cpu_count() or 2
        self.prepare_pool = ThreadPoolExecutor(max_workers=self.prepare_threads, thread_name_prefix="prepare")
        self._reload_lock = asyncio.Lock()
        self.in_flight = 0  # inference requests admitted and not yet answered
        self.trimmer = HeapTrimmer()
        for model in self.runtime.models.values():
            self.attach_batcher(model)

    def attach_batcher(self, model: LoadedModel) -> None:
        model.batcher = MicroBatcher(
            model.task.run,
            max_batch_size=self.settings.batch_limit(model.manifest.modality, model.session_info.device),
            slots=self.settings.slots(model.manifest.modality, model.session_info.device),
            max_wait_ms=self.settings.max_wait_ms,
            max_queue=self.settings.max_queue,
            on_batch=self.observer(model.name) if self.observer else None,
        )

    async def infer(self, model: LoadedModel, request: Any) -> dict[str, Any]:
        """Every stage of the model's task for one request (from any protocol): check, prepare,
        the batched run (shared with every other request for this model), answer.

        Admission: at most `max_concurrency` requests are inside at once; more are answered 429 at
        once. A request is counted only from here, i.e. once its body has been read and parsed, so
        a slow upload never holds a place that a complete request could use (the connection guard
        in serving/connections.py bounds slow uploads themselves)."""
        if self.in_flight >= self.settings.max_concurrency:
            raise TooManyRequests(
                f"too many requests: {self.in_flight} inference requests in flight; retry shortly"
            )
        self.in_flight += 1
        try:
            return await self._infer(model, request)
        finally:
            self.in_flight -= 1
            self.trimmer.after_request()

    async def _infer(self, model: LoadedModel, request: Any) -> dict[str, Any]:
        task = model.task
        task.check(request)
        if isinstance(task, FileTask) or task.heavy(request):
            prepared = await self.prepare(task, request)
        else:  # cheap: inline, without a hand-off
            try:
                prepared = task.prepare(request)
            except InputError as exc:
                raise RequestError(str(exc)) from None
        items = task.items(prepared)
        outputs = await model.batcher.submit(items) if items else []
        if task.answer_in_pool:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.prepare_pool, task.answer, request, prepared, outputs)
        return task.answer(request, prepared, outputs)

    async def prepare(self, handler: ServingTask, request: Any) -> Any:
        """The task's prepare stage: file tasks decode their uploads in the pool, the files dealt
        round-robin to one job per prepare thread (a job costs the event loop a future and a thread
        hand-off, which adds up at dozens of files); other tasks prepare inline unless heavy."""
        loop = asyncio.get_running_loop()
        try:
            if isinstance(handler, FileTask):
                files = request.files
                groups = min(len(files), self.prepare_threads)
                done = await asyncio.gather(
                    *(
                        loop.run_in_executor(self.prepare_pool, _prepare_uploads, handler, files[g::groups])
                        for g in range(groups)
                    )
                )
                prepared: list[Any] = [None] * len(files)
                for g, group in enumerate(done):
                    prepared[g::groups] = group
                for p in prepared:
                    if isinstance(p, Exception):
                        raise p
                return prepared
            if handler.heavy(request):
                return await loop.run_in_executor(self.prepare_pool, handler.prepare, request)
            return handler.prepare(request)
        except InputError as exc:
            raise RequestError(str(exc)) from None

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
            if retired:
                loop.call_later(self.settings.timeout_s + 2, refreeze_heap)
            return report

    def build_status(self) -> dict[str, Any] | None:
        """What `tuneserve serve --build-missing` is building in the background, None when nothing."""
        try:
            status = json.loads((Path(self.settings.repository) / BUILD_STATUS_FILE).read_text())
        except (OSError, ValueError):
            return None
        return status if isinstance(status, dict) else None

    async def watch_builds(self, poll_s: float = 2.0) -> None:
        """While a background build runs, reload whenever its status changes (a model landed, or
        failed) and once more when it ends; returns at once when none runs."""
        last = self.build_status()
        while last is not None:
            await asyncio.sleep(poll_s)
            status = self.build_status()
            if status != last:
                report = await self.reload()
                log.info("background build: %s; reload: %s", status or "finished", report)
                last = status

    def close(self) -> None:
        for model in self.runtime.models.values():
            if model.batcher is not None:
                model.batcher.close()
        self.prepare_pool.shutdown(wait=False, cancel_futures=True)


def _prepare_uploads(handler: FileTask, uploads: list[Upload]) -> list[Any]:
    """`prepare_upload` for each upload in turn; an exception is returned in its place."""
    results: list[Any] = []
    for upload in uploads:
        try:
            results.append(handler.prepare_upload(upload))
        except Exception as exc:
            results.append(
                exc
                if isinstance(exc, RequestError)
                else RequestError(f"{upload.label(handler.file_field)}: {exc}")
            )
    return results
