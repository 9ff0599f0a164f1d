"""Slow and greedy clients against a real `bentoml serve` worker (loopback only, bounded sockets):
slow bodies, unfinished headers, oversized headers, per-address connection caps, random paths and
the metrics they must not add, percent-encoded slashes."""

from __future__ import annotations

import re
import socket
import time
import uuid
from contextlib import ExitStack, closing
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import start_server
from tests.test_connections import closed_by_server as closed

VALID = {"model": "intent", "texts": ["I lost my card"]}


@pytest.fixture(scope="module")
def guarded(tiny_repository, tmp_path_factory):
    with start_server(
        tiny_repository,
        tmp_path_factory.mktemp("slow_clients"),
        TUNESERVE_MAX_CONCURRENCY="8",
        TUNESERVE_HEADER_TIMEOUT_S="2",
        TUNESERVE_BODY_GRACE_S="3",
        TUNESERVE_MAX_CONNECTIONS_PER_CLIENT="400",
    ) as server:
        yield server


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def open_sockets(url: str, count: int, first_bytes: bytes, stack: ExitStack) -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = stack.enter_context(closing(socket.create_connection(address(url), timeout=5)))
        s.sendall(first_bytes)
        out.append(s)
    return out


def classify(url: str, **kwargs) -> httpx.Response:
    return httpx.post(url + "/v1/text/classify", json=VALID, timeout=10, **kwargs)


def test_slow_bodies_hold_no_inference_place(guarded):
    """More trickling uploads than TUNESERVE_MAX_CONCURRENCY: complete requests are still answered."""
    head = (
        b"POST /v1/text/classify HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        b"content-length: 100\r\n\r\n{"
    )
    with ExitStack() as stack:
        slow = open_sockets(guarded.url, 60, head, stack)
        time.sleep(0.5)
        for _ in range(3):
            assert classify(guarded.url).status_code == 200
        # after the grace period the trickles fall below the minimum rate and are closed with a 408
        for s in slow[:5]:
            s.sendall(b" ")
        answered = [closed(s, 10) for s in slow]
        assert all(answered), f"{answered.count(False)} slow bodies still open"
    assert classify(guarded.url).status_code == 200


def test_unfinished_headers_are_closed_after_the_header_timeout(guarded):
    with ExitStack() as stack:
        slow = open_sockets(guarded.url, 200, b"POST /v1/text/classify HTTP/1.1\r\nhost: t\r\nx-a: ", stack)
        assert classify(guarded.url).status_code == 200
        started = time.monotonic()
        assert all(closed(s, 8) for s in slow)
        assert time.monotonic() - started < 8


def test_oversized_and_too_many_headers_are_refused(guarded):
    big = httpx.post(
        guarded.url + "/v1/text/classify", json=VALID, headers={"x-big": "a" * 2_000_000}, timeout=10
    )
    assert big.status_code == 431 and "headers over" in big.json()["error"]
    many = httpx.post(
        guarded.url + "/v1/text/classify",
        json=VALID,
        headers={f"x-h{i}": "1" for i in range(150)},
        timeout=10,
    )
    assert many.status_code == 431 and "request headers" in many.json()["error"]
    assert classify(guarded.url).status_code == 200


def test_connections_per_address_are_capped(tiny_repository, tmp_path):
    with (
        start_server(tiny_repository, tmp_path, TUNESERVE_MAX_CONNECTIONS_PER_CLIENT="20") as server,
        ExitStack() as stack,
    ):
        held = open_sockets(server.url, 20, b"", stack)
        time.sleep(0.3)
        refused = classify(server.url)
        assert refused.status_code == 503 and "too many connections" in refused.json()["error"]
        for s in held:
            s.close()
        time.sleep(0.3)
        assert classify(server.url).status_code == 200


def series(url: str) -> set[str]:
    """The metric series /metrics exposes: each sample line without its value."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_random_paths_add_no_metric_series(guarded):
    # one request of each kind first: a kind's series appear with its first request
    for path in [
        "/v1/text/classify",
        "/v1/models",
        "/v1/warm",
        "/warm",
        "/v2/models/warm/infer",
        "/v2/models/intent/ready",
        "/v2/models/intent/versions/0",
    ]:
        httpx.request("POST" if "classify" in path else "GET", guarded.url + path, json=VALID, timeout=10)
    before = series(guarded.url)
    with httpx.Client(timeout=10) as client:
        for i in range(300):
            token = uuid.uuid4().hex
            path = [
                f"/{token}",
                f"/v1/{token}",
                f"/v2/models/{token}/infer",
                f"/v2/models/intent/versions/{i}",
            ][i % 4]
            response = client.get(guarded.url + path)
            assert response.status_code in (404, 405), (path, response.status_code)
    after = series(guarded.url)
    assert after == before, sorted(after - before)[:10]


def test_percent_encoded_slashes_are_not_routed(guarded):
    for path in ["/v1%2ftext%2fclassify", "/v1/text%2Fclassify", "/v2%2fmodels%2fintent%2finfer"]:
        response = httpx.post(guarded.url + path, json=VALID, timeout=10)
        assert response.status_code == 404, (path, response.status_code)
        assert re.search("no route", response.json()["error"])
