"""HTTP limits against the real server process, over raw sockets: oversized and slow
requests are cut off (431, 408), idle connections closed, and none of it costs memory."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from app.api.auth import hash_key
from app.devdb import LocalPair
from tests.api.raw_http import connect, problem_of, read_until_closed, send_until_refused, status_of
from tests.conftest import LiveServer, start_server, stop_server

KEY = "connection-limits-key-0123456789"
READ_TIMEOUT_S = 1.0
KEEP_ALIVE_S = 1


@pytest.fixture(scope="module")
def server(pair: LocalPair) -> Iterator[LiveServer]:
    """A server with keys, a 1 s read timeout and a 1 s keep-alive."""
    keys = [{"id": "limits", "sha256": hash_key(KEY), "scopes": ["read"]}]
    live = start_server(
        pair,
        MIRRORPOOL_AUTH="keys",
        MIRRORPOOL_API_KEYS=json.dumps(keys),
        MIRRORPOOL_REQUEST_READ_TIMEOUT_S=str(READ_TIMEOUT_S),
        MIRRORPOOL_KEEP_ALIVE_TIMEOUT_S=str(KEEP_ALIVE_S),
        MIRRORPOOL_MAX_INFLIGHT_PER_KEY="3",
    )
    yield live
    stop_server(live)


def test_a_header_over_64_kib_is_431(server: LiveServer) -> None:
    with connect(server) as sock:
        head = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
        send_until_refused(sock, head, b"a" * 65536, 1024 * 1024)
        answer = read_until_closed(sock)
    assert status_of(answer) == 431
    assert problem_of(answer)["type"] == "urn:mirrorpool:problem:headers-too-large"


def test_a_header_block_just_under_the_limit_is_served(server: LiveServer) -> None:
    with connect(server) as sock:
        head = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        filler = b"X-Pad: " + b"a" * (60 * 1024) + b"\r\n\r\n"
        sock.sendall(head + filler)
        answer = read_until_closed(sock)
    assert status_of(answer) == 200


def test_10000_headers_are_431(server: LiveServer) -> None:
    with connect(server) as sock:
        head = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        send_until_refused(sock, head + b"a:b\r\n" * 10_000 + b"\r\n", b"", 0)
        answer = read_until_closed(sock)
    assert status_of(answer) == 431
    assert "header fields" in str(problem_of(answer)["detail"])


def test_ten_unfinished_16_mb_header_blocks_cost_no_memory(server: LiveServer) -> None:
    before = server.rss_kib()
    socks = [connect(server) for _ in range(10)]
    try:
        for sock in socks:
            head = b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
            send_until_refused(sock, head, b"b" * 65536, 16 * 1024 * 1024)
        answers = [read_until_closed(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert [status_of(a) for a in answers] == [431] * 10
    growth_mib = (server.rss_kib() - before) / 1024
    assert growth_mib < 8, f"RSS grew {growth_mib:.1f} MiB"


def test_headers_that_never_finish_are_408_after_the_read_timeout(server: LiveServer) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert status_of(answer) == 408
    assert problem_of(answer)["type"] == "urn:mirrorpool:problem:request-timeout"
    assert READ_TIMEOUT_S * 0.9 < elapsed < READ_TIMEOUT_S + 2


def test_a_body_that_never_finishes_is_408_and_the_connection_closed(
    server: LiveServer,
) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"sql": "SELECT 1"'
        )
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert status_of(answer) == 408
    assert answer.count(b"HTTP/1.1 ") == 1  # the app's own answer to the gone client is dropped
    assert READ_TIMEOUT_S * 0.9 < elapsed < READ_TIMEOUT_S + 2


def test_an_idle_keep_alive_connection_is_closed(server: LiveServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        started = time.monotonic()
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert status_of(answer) == 200
    assert KEEP_ALIVE_S * 0.9 < elapsed < KEEP_ALIVE_S + 2


def test_a_connection_that_never_sends_a_request_is_closed(server: LiveServer) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"\r\n")  # blank lines before a request: not a request
        assert read_until_closed(sock) == b""
        elapsed = time.monotonic() - started
    assert KEEP_ALIVE_S * 0.9 < elapsed < KEEP_ALIVE_S + 2


def test_a_keep_alive_connection_serves_requests_one_after_another(server: LiveServer) -> None:
    with connect(server) as sock:
        for _ in range(3):
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while not answer.endswith(b"}"):
                answer += sock.recv(65536)
            assert status_of(answer) == 200
