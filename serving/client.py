"""A typed Python client for the v1 routes, sync (`Client`) and async (`AsyncClient`), on httpx.

One method per task of the registry, named by the task's `client_method` and built from its
request (`classify_text(texts, *, model=None)`, `classify_images(images, *, top_k=None, model=None)`,
...); a new task gets its method without a change here. Each returns the JSON answer as a dict.

    from serving.client import Client

    with Client("http://localhost:3000", api_key="...") as client:
        client.classify_text(["I lost my card"])["predictions"][0]["label"]
        client.classify_images(["part1.jpg", Path("part2.png"), png_bytes], model="surface-defects")

Files are paths or bytes (or (filename, bytes) pairs). One connection pool per client, reused across
calls. 429 and 503 (the server at capacity) are retried after their `Retry-After`, within a budget
of attempts and seconds (`Retry`); any other error status raises `APIError` with the status and
the server's message. Network failures and timeouts raise httpx's own exceptions.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import httpx

from serving.tasks import TASKS, FileTask, ServingTask

FileInput: TypeAlias = str | os.PathLike[str] | bytes | tuple[str, bytes]


class APIError(Exception):
    """An error status from the server: `status` and the server's `message` (its `{"error": ...}`)."""

    def __init__(self, status: int, message: str, response: httpx.Response | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.response = response

    @classmethod
    def of(cls, response: httpx.Response) -> APIError:
        try:
            body = response.json()
            message = body["error"] if isinstance(body, dict) and "error" in body else response.text
        except ValueError:
            message = response.text
        return cls(response.status_code, str(message)[:2000], response)


@dataclass(frozen=True)
class Retry:
    """When to send a request again: on `statuses` (the server at capacity), after the answer's
    `Retry-After` (seconds or an HTTP date) or, without one, `backoff_s` doubling per attempt; each
    wait stretched by up to `jitter` of itself so that clients refused together do not come back
    together. At most `attempts` sends in all, and no wait that would end more than `budget_s`
    after the first send; then the last answer's error is raised. `Retry(attempts=1)`: never."""

    attempts: int = 5
    budget_s: float = 30.0
    backoff_s: float = 0.5
    jitter: float = 0.25
    statuses: frozenset[int] = frozenset({429, 503})

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.budget_s < 0:
            raise ValueError("Retry needs attempts >= 1 and budget_s >= 0")

    def wait(self, response: httpx.Response, attempt: int, elapsed_s: float) -> float | None:
        """Seconds to wait before sending again, or None to stop here."""
        if response.status_code not in self.statuses or attempt >= self.attempts:
            return None
        delay = retry_after(response.headers.get("retry-after"))
        if delay is None:
            delay = self.backoff_s * 2 ** (attempt - 1)
        delay *= 1 + random.uniform(0, self.jitter)
        return delay if elapsed_s + delay <= self.budget_s else None


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (delta-seconds or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Base:
    """What the sync and async clients share: settings, the connection pool, each call as an httpx
    request. `transport`: an httpx transport (sync for `Client`, async for `AsyncClient`), e.g. a
    Unix socket, or an ASGI app in-process."""

    pool: ClassVar[type[httpx.Client] | type[httpx.AsyncClient]]

    def __init__(
        self,
        url: str = "http://localhost:3000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: Retry | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or Retry()
        self.headers = {"User-Agent": "tuneserve-client", **(headers or {})}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.http: Any = self.pool(
            base_url=self.url,
            headers=self.headers,
            timeout=timeout,
            transport=transport,  # type: ignore[arg-type]
        )

    @staticmethod
    def _request(task: type[ServingTask], given: dict[str, Any]) -> dict[str, Any]:
        """httpx.request keyword arguments for a call of `task` with the method's arguments."""
        url = "/v1" + task.route
        if not issubclass(task, FileTask):
            return {"url": url, "json": {k: v for k, v in given.items() if v is not None}}
        files = [(task.file_field, _file(f, i, task)) for i, f in enumerate(given[task.file_field])]
        data = {k: str(v) for k, v in given.items() if k != task.file_field and v is not None}
        return {"url": url, "files": files, "data": data}

    @staticmethod
    def _answer(response: httpx.Response) -> Any:
        if response.is_error:
            raise APIError.of(response)
        return response.json()


def _file(given: FileInput, index: int, task: type[FileTask]) -> tuple[str, bytes, str]:
    """(filename, bytes, content type) of one upload. Read whole: a retry sends it again."""
    if isinstance(given, tuple):
        name, data = given
    elif isinstance(given, bytes | bytearray | memoryview):
        name, data = f"{task.file_field}-{index}", bytes(given)
    else:
        path = Path(given)
        name, data = path.name, path.read_bytes()
    return name, data, task.content_types.get(Path(name).suffix.lower(), "application/octet-stream")


class Client(_Base):
    """The v1 routes over one httpx.Client (connections kept and reused); close it, or use `with`."""

    pool = httpx.Client

    def models(self) -> list[dict[str, Any]]:
        """The models that serve: name, task, version, labels, variant, metrics..."""
        return self._send({"method": "GET", "url": "/v1/models"})["models"]

    def _call(self, task: type[ServingTask], given: dict[str, Any]) -> dict[str, Any]:
        return self._send({"method": "POST", **self._request(task, given)})

    def _send(self, request: dict[str, Any]) -> Any:
        started = time.monotonic()
        for attempt in range(1, self.retry.attempts + 1):
            response = self.http.request(**request)
            wait = self.retry.wait(response, attempt, time.monotonic() - started)
            if wait is None:
                break
            time.sleep(wait)
        return self._answer(response)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """`Client` for asyncio: the same methods, as coroutines; close it with `aclose` or `async with`."""

    pool = httpx.AsyncClient

    async def models(self) -> list[dict[str, Any]]:
        """The models that serve: name, task, version, labels, variant, metrics..."""
        return (await self._send({"method": "GET", "url": "/v1/models"}))["models"]

    async def _call(self, task: type[ServingTask], given: dict[str, Any]) -> dict[str, Any]:
        return await self._send({"method": "POST", **self._request(task, given)})

    async def _send(self, request: dict[str, Any]) -> Any:
        started = time.monotonic()
        for attempt in range(1, self.retry.attempts + 1):
            response = await self.http.request(**request)
            wait = self.retry.wait(response, attempt, time.monotonic() - started)
            if wait is None:
                break
            await asyncio.sleep(wait)
        return self._answer(response)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _task_method(task: type[ServingTask], asynchronous: bool) -> Callable[..., Any]:
    """The method of `task`: its signature from the task's arguments, files as `FileInput`s."""
    signature = task.method_signature(files=Sequence[FileInput], returns=dict[str, Any])

    def given(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = signature.bind(*args, **kwargs).arguments
        bound.pop("self")
        return bound

    if asynchronous:

        async def method(*args: Any, **kwargs: Any) -> Any:
            return await args[0]._call(task, given(args, kwargs))

    else:

        def method(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            return args[0]._call(task, given(args, kwargs))

    method.__name__ = task.client_method
    method.__qualname__ = f"{'AsyncClient' if asynchronous else 'Client'}.{task.client_method}"
    method.__doc__ = f"{task.summary}: POST /v1{task.route}. Returns the JSON answer."
    method.__signature__ = signature  # type: ignore[attr-defined]
    return method


def _add_task_methods() -> None:
    for task in TASKS.values():
        for cls, asynchronous in ((Client, False), (AsyncClient, True)):
            if hasattr(cls, task.client_method):
                raise TypeError(f"{task.name}: {cls.__name__} already has a {task.client_method!r}")
            setattr(cls, task.client_method, _task_method(task, asynchronous))


_add_task_methods()
