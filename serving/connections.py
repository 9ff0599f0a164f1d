"""Connection-level limits, enforced in the HTTP protocol of the worker's uvicorn.

BentoML builds the worker's uvicorn server itself and exposes none of its connection settings, and
everything BentoML adds (its concurrency limit, timeouts, metrics) works per ASGI request, i.e.
only once a request's headers have arrived. A client that never finishes its headers, sends
megabytes of them, or trickles its body byte by byte is invisible there while it holds a socket,
memory and (with BentoML's own concurrency limit) an inference slot. So the worker's protocol class
is uvicorn's own (httptools or h11, whichever uvicorn picks) with a guard mixed in:

- the head of every request (request line and headers) must arrive within `header_timeout_s` and
  fit in `max_header_bytes`, or the connection is answered 408 / 431 and closed;
- once the head is in, the body must keep up an average of `body_min_rate` bytes/s after a grace
  period, or 408 and close;
- one client address holds at most `max_connections_per_client` connections; more are answered 503
  and closed at once.

`install()` makes uvicorn's "auto" protocol this guarded class; it runs in the worker when the
service module is imported, before BentoML creates the server. Requests are counted against the
concurrency limit only once their body is read (`serving.server.ModelServer.admit`), so a slow
upload holds no inference slot either way. `EdgeApp` wraps the whole ASGI app in front of BentoML's
middleware for the checks that need parsed headers but must come before BentoML sees the path.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from starlette.types import ASGIApp, Receive, Scope, Send

PATH_KEY = "tuneserve.path"  # the real path while BentoML's middleware sees the metrics label


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_header_bytes: int
    max_headers: int
    body_min_rate: float
    body_grace_s: float
    max_connections_per_client: int


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class GuardMixin:
    """Mixed in front of uvicorn's HttpToolsProtocol or H11Protocol (they share the attributes used
    here: `transport`, `client`, `cycle`, `loop`, and the `connection_made`, `data_received`,
    `connection_lost`, `on_response_complete` methods)."""

    limits: ClassVar[ConnectionLimits]
    clients: ClassVar[Counter[str]] = Counter()  # open connections per address, in this worker
    edge: ClassVar[Callable[[ASGIApp], ASGIApp] | None] = None  # wraps the server's app once
    wrapped: ClassVar[tuple[ASGIApp, ASGIApp] | None] = None  # (the server's app, wrapped)

    app: ASGIApp
    transport: asyncio.Transport
    client: tuple[str, int] | None
    cycle: Any
    loop: asyncio.AbstractEventLoop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(
            getattr(self, "conn", None), h11.Connection
        ):  # h11 buffers a head up to a limit of its own
            self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=2 * self.limits.max_header_bytes)
        cls = type(self)
        if cls.edge is not None:
            if cls.wrapped is None or cls.wrapped[0] is not self.app:
                cls.wrapped = (self.app, cls.edge(self.app))
            self.app = cls.wrapped[1]

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._address = self.client[0] if self.client else ""
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self.clients[self._address] += 1
        if self.clients[self._address] > self.limits.max_connections_per_client:
            self._refuse(503, "Service Unavailable", "too many connections from this address")
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self.clients[self._address] -= 1
        if self.clients[self._address] <= 0:
            del self.clients[self._address]
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        limit = self.limits.max_header_bytes
        if self._in_head and self._head_bytes + len(data) > limit:
            end = data.find(b"\r\n\r\n")  # checked before the parser buffers any of it
            if end < 0 or self._head_bytes + end > limit:
                self._refuse(
                    431, "Request Header Fields Too Large", f"request line and headers over {limit} bytes"
                )
                return
        cycle = self.cycle
        super().data_received(data)  # type: ignore[misc]
        if self._in_head and self.cycle is not cycle and self.cycle is not None:
            self._head_done()  # this data completed a request's head (and may hold body bytes)
        elif self._in_head:
            self._head_bytes += len(data)
        else:
            self._body_bytes += len(data)

    def send_400_response(self, msg: str) -> None:
        """A request the parser rejects: the JSON error every other answer has, then close."""
        self._refuse(400, "Bad Request", f"malformed HTTP request: {msg}")

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self._refused:
            self._await_head()  # a kept-alive connection: the next request's head is timed afresh

    # the head

    def _await_head(self) -> None:
        self._in_head, self._head_bytes, self._body_bytes = True, 0, 0
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        if self._in_head:
            if self._head_bytes:
                self._refuse(408, "Request Timeout", "request headers not received in time")
            else:  # an idle kept-alive connection: nothing to answer
                self._refuse(0, "", "")

    def _head_done(self) -> None:
        self._in_head = False
        self._body_started = time.monotonic()
        self._arm(self.limits.body_grace_s, self._check_body)

    # the body

    def _check_body(self) -> None:
        cycle = self.cycle
        if cycle is None or not cycle.more_body or cycle.response_started:
            self._timer = None  # the body is in, or the app has answered: nothing left to time
            return
        elapsed = time.monotonic() - self._body_started
        if self._body_bytes < self.limits.body_min_rate * elapsed:
            self._refuse(
                408,
                "Request Timeout",
                f"request body arriving slower than {self.limits.body_min_rate:g} bytes/s",
            )
            return
        self._arm(1.0, self._check_body)

    # plumbing

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel()
        self._timer = self.loop.call_later(delay, callback)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer (unless a response already started) and close; the app sees a disconnect."""
        self._refused = True
        self._cancel()
        cycle = self.cycle
        if status and (cycle is None or not cycle.response_started):
            self.transport.write(_raw_response(status, reason, message))
        if cycle is not None:
            cycle.disconnected = True  # nothing the app sends later reaches the socket
            cycle.message_event.set()
        self.transport.close()


def guarded(base: type, limits: ConnectionLimits, edge: Callable[[ASGIApp], ASGIApp] | None = None) -> type:
    """uvicorn's protocol class `base` with the guard in front, one per-address count for all its
    connections, and the server's app wrapped by `edge` (e.g. an EdgeApp)."""
    attributes = {"limits": limits, "clients": Counter(), "edge": staticmethod(edge) if edge else None}
    return type(f"Guarded{base.__name__}", (GuardMixin, base), attributes)


def install(limits: ConnectionLimits, edge: Callable[[ASGIApp], ASGIApp] | None = None) -> None:
    """Make the guarded protocol the one uvicorn's "auto" setting (BentoML's) resolves to."""
    import uvicorn.config
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    global GuardedHTTPProtocol
    GuardedHTTPProtocol = guarded(AutoHTTPProtocol, limits, edge)
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:GuardedHTTPProtocol"


GuardedHTTPProtocol: type | None = None


class EdgeApp:
    """The first ASGI app of a request, in front of BentoML's middleware.

    - More than `max_headers` headers: 431.
    - A percent-encoded `/` or `\\` in the path: 404 (uvicorn decodes them into the path, which
      would route `/v1%2ftext%2fclassify` as if the slashes were real).
    - BentoML's metrics label every request with its path, so random paths would add series without
      bound. A path outside every app is answered 404 here and never reaches them; any other path is
      shown to them as its route's pattern (`label`: `/v2/models/intent/versions/{version}/infer`,
      `/v1/{path}` for one no route of the app matches, which the app then refuses itself, after its
      API key check), and `restore_path` (the innermost middleware) puts the real path back before
      routing.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_headers: int,
        label: Callable[[str], str],
    ) -> None:
        self.app = app
        self.max_headers = max_headers
        self.label = label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if len(scope["headers"]) > self.max_headers:
            return await _json(send, 431, f"more than {self.max_headers} request headers")
        raw = scope.get("raw_path") or b""
        if re.search(rb"%(2f|5c)", raw, re.IGNORECASE):
            return await _json(send, 404, "no route: percent-encoded '/' or '\\' in the path")
        path = scope["path"]
        try:
            shown = self.label(path)
        except NoRoute as exc:
            return await _json(send, 404, str(exc))
        if shown != path:
            scope[PATH_KEY] = path
            scope["path"] = shown
        await self.app(scope, receive, send)


def restore_path(scope: Scope) -> None:
    """Undo EdgeApp's label: called by the innermost middleware, before routing."""
    if PATH_KEY in scope:
        scope["path"] = scope.pop(PATH_KEY)


async def _json(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class NoRoute(Exception):
    """No app serves this path."""


def path_labeller(
    exact: Iterable[str],
    patterns: Iterable[tuple[str, str]],
    known_names: Callable[[], Iterable[str]],
    prefixes: Iterable[str] = (),
) -> Callable[[str], str]:
    """The metrics label of a path: itself when it is one of `exact`; for the first regex of
    `patterns` that matches, its label, with `{name}` filled in when the regex's `name` group is a
    served model (left as `{name}` otherwise); under one of `prefixes`, `<prefix>{path}` — such paths
    still reach their app, which answers (or refuses) them itself. Raises NoRoute for any other path."""
    fixed = frozenset(exact)
    compiled = [(re.compile(regex), shown) for regex, shown in patterns]
    under = tuple(prefixes)

    def label(path: str) -> str:
        if path in fixed:
            return path
        for regex, shown in compiled:
            match = regex.fullmatch(path)
            if match is None:
                continue
            name = match.groupdict().get("name")
            return shown.replace("{name}", name) if name is not None and name in set(known_names()) else shown
        for prefix in under:
            if path.startswith(prefix):
                return prefix + "{path}"
        raise NoRoute(f"no route {path[:200]!r}")

    return label


def route_table(mounted: Iterable[tuple[str, Any]]) -> tuple[list[str], list[tuple[str, str]]]:
    """Exact paths and (regex, label) patterns of the routes of Starlette apps mounted at the given
    prefixes: `{name}` in a route matches a model name, any other `{param}` one path segment; catch-all
    routes (`{...:path}`) are left out, since they only answer 404."""
    exact: list[str] = []
    patterns: list[tuple[str, str]] = []
    for prefix, app in mounted:
        for route in app.routes:
            path = prefix + getattr(route, "path", "")
            if ":path}" in path:
                continue
            if "{" not in path:
                exact.append(path)
                continue
            regex = re.sub(
                r"\\\{(\w+)\\\}",
                lambda m: "(?P<name>[^/]+)" if m.group(1) == "name" else "[^/]+",
                re.escape(path),
            )
            patterns.append((regex, path))
    return exact, patterns
