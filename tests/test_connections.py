"""The connection guard (serving/connections.py) in a real uvicorn server on a loopback port, over
both of uvicorn's HTTP implementations, with raw sockets playing the slow and greedy clients."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.connections import ConnectionLimits, EdgeApp, guarded, path_labeller, restore_path
from tests.conftest import free_port

LIMITS = ConnectionLimits(
    header_timeout_s=1.0,
    max_header_bytes=16 * 1024,
    max_headers=50,
    body_min_rate=2000.0,
    body_grace_s=0.5,
    max_connections_per_client=40,
)


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, answers its length, the path metrics saw and the path routing saw."""
    if scope["type"] != "http":
        return
    label = scope["path"]
    restore_path(scope)
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({"size": size, "path": scope["path"], "label": label}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def edge(app):
    return EdgeApp(
        app,
        max_headers=LIMITS.max_headers,
        label=path_labeller(
            ["/echo"],
            [(r"/models/(?P<name>[^/]+)/versions/[^/]+", "/models/{name}/versions/{version}")],
            lambda: ["intent"],
            ("/app/",),
        ),
    )


@contextmanager
def serve(base: type) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        echo,
        host="127.0.0.1",
        port=port,
        http=guarded(base, LIMITS, edge),
        log_level="critical",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(params=[HttpToolsProtocol, H11Protocol], ids=["httptools", "h11"])
def port(request) -> Iterator[int]:
    with serve(request.param) as port:
        yield port


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def read_response(s: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return 0, {}
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        None,
    )
    while length is not None and len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, json.loads(body) if body else {}


def request(port: int, path: str = "/echo", body: bytes = b"x" * 100, extra: bytes = b"") -> tuple[int, dict]:
    with closing(connect(port)) as s:
        try:
            s.sendall(
                f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n".encode()
                + extra
                + b"\r\n"
                + body
            )
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early (e.g. 431 on a huge head) and closed: its answer is still readable
        try:
            return read_response(s)
        except ConnectionResetError:
            return 0, {}


def closed_by_server(s: socket.socket, within: float) -> bool:
    """True when the server closes `s` (EOF or reset) within `within` seconds; reads any answer."""
    s.settimeout(within)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_normal_request_passes(port):
    assert request(port) == (200, {"size": 100, "path": "/echo", "label": "/echo"})


def test_unfinished_heads_are_closed_after_the_header_timeout_while_others_are_served(port):
    sockets = [connect(port) for _ in range(30)]
    try:
        for s in sockets:
            s.sendall(b"POST /echo HTTP/1.1\r\nhost: t\r\nx-slow: ")
        assert request(port)[0] == 200  # the server still answers everyone else
        started = time.monotonic()
        assert all(closed_by_server(s, LIMITS.header_timeout_s + 2) for s in sockets)
        assert time.monotonic() - started < LIMITS.header_timeout_s + 2
    finally:
        for s in sockets:
            s.close()


def test_an_idle_connection_is_closed_without_an_answer(port):
    with closing(connect(port)) as s:
        s.settimeout(LIMITS.header_timeout_s + 2)
        assert s.recv(100) == b""


def test_oversized_headers_are_refused(port):
    status, body = request(port, extra=b"x-big: " + b"a" * (2 * 1024 * 1024) + b"\r\n")
    assert status in (431, 400), (status, body)  # h11 refuses a head this size itself, with a 400
    assert request(port)[0] == 200


def test_too_many_headers_are_refused_with_431(port):
    many = b"".join(b"x-h%d: 1\r\n" % i for i in range(LIMITS.max_headers + 1))
    status, body = request(port, extra=many)
    assert status == 431 and "headers" in body["error"]


def test_a_trickled_body_is_refused_and_frees_its_connection(port):
    with closing(connect(port)) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\n\r\n")
        started = time.monotonic()
        status = 0
        s.settimeout(5)
        for _ in range(40):
            try:
                s.sendall(b"x")
            except OSError:
                break
            time.sleep(0.1)
            s.setblocking(False)
            try:
                data = s.recv(65536)
            except BlockingIOError:
                data = None
            s.setblocking(True)
            if data is not None:
                status = int(data.split()[1]) if data else -1
                break
        assert status == 408, status
        assert time.monotonic() - started < LIMITS.body_grace_s + 3


def test_a_steady_large_body_passes(port):
    body = b"y" * (3 * 1024 * 1024)
    assert request(port, body=body) == (200, {"size": len(body), "path": "/echo", "label": "/echo"})


def test_connections_per_address_are_capped(port):
    sockets = [connect(port) for _ in range(LIMITS.max_connections_per_client)]
    try:
        time.sleep(0.2)
        with closing(connect(port)) as extra:
            assert read_response(extra)[0] == 503
        for s in sockets[:5]:
            s.close()
        time.sleep(0.2)
        assert request(port)[0] == 200  # closing some frees their places
    finally:
        for s in sockets:
            s.close()


def test_percent_encoded_slashes_are_not_routed(port):
    assert request(port, "/ech%2fo")[0] == 404
    assert request(port, "/models%2Fintent")[0] == 404


def test_unknown_paths_never_reach_the_app_and_variable_parts_are_labelled(port):
    status, body = request(port, "/random-12345")
    assert status == 404 and body["error"] == "no route '/random-12345'"
    # paths under an app's prefix reach it (its own 404 or API key check answers them), as one label
    assert request(port, "/app/random-12345")[1] == {
        "size": 100,
        "path": "/app/random-12345",
        "label": "/app/{path}",
    }
    # a model name is kept in the label only when it is served; the app routes on the real path
    for path, label in [
        ("/models/intent/versions/7", "/models/intent/versions/{version}"),
        ("/models/nobody/versions/1", "/models/{name}/versions/{version}"),
    ]:
        assert request(port, path) == (200, {"size": 100, "path": path, "label": label})
