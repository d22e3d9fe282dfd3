"""What a request's headers decide, against the real server process: bodies that are not
JSON (415), requests without a valid key (401 before the body is read), the in-flight limit
from the headers on, and, with auth disabled, other sites and rebound names refused."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from app.api.auth import hash_key
from app.devdb import LocalPair
from tests.api.raw_http import connect, problem_of, read_until_closed, status_of
from tests.conftest import LiveServer, start_server, stop_server
from tests.waiting import eventually_sync

KEY = "gate-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
READ_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def server(pair: LocalPair, request_path: str) -> Iterator[LiveServer]:
    """A server with a key allowed 2 requests in flight, and a 1.5 s read timeout (one for
    each request path)."""
    keys = [{"id": "gate", "sha256": hash_key(KEY), "scopes": ["read", "write"]}]
    live = start_server(
        pair,
        MIRRORPOOL_AUTH="keys",
        MIRRORPOOL_API_KEYS=json.dumps(keys),
        MIRRORPOOL_MAX_INFLIGHT_PER_KEY="2",
        MIRRORPOOL_REQUEST_READ_TIMEOUT_S=str(READ_TIMEOUT_S),
    )
    yield live
    stop_server(live)


@pytest.mark.parametrize("path", ["/v1/query", "/v1/transaction", "/v1/query/stream"])
@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("text/plain;charset=UTF-8", b'{"sql": "SELECT 1"}'),
        ("application/x-www-form-urlencoded", b"sql=SELECT+1"),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="sql"'
         b"\r\n\r\nSELECT 1\r\n--x--\r\n"),
        (None, b'{"sql": "SELECT 1"}'),
    ],
)  # fmt: skip
def test_a_body_that_is_not_json_is_415(
    server: LiveServer, path: str, content_type: str | None, content: bytes
) -> None:
    headers = AUTH | ({"content-type": content_type} if content_type else {})
    response = httpx.post(server.url + path, content=content, headers=headers, timeout=10)
    assert response.status_code == 415, response.text
    assert response.json()["type"] == "urn:mirrorpool:problem:unsupported-media-type"
    assert response.headers["connection"] == "close"


def test_json_with_parameters_is_served(server: LiveServer) -> None:
    for content_type in ("application/json; charset=utf-8", "application/problem+json"):
        response = httpx.post(
            server.url + "/v1/query",
            content=b'{"sql": "SELECT 1"}',
            headers=AUTH | {"content-type": content_type},
            timeout=10,
        )
        assert response.status_code == 200, (content_type, response.text)


def test_neons_text_body_on_sql_still_needs_a_key(server: LiveServer) -> None:
    response = httpx.post(
        server.url + "/sql",
        content=b'{"query": "SELECT 1", "params": []}',
        headers={"content-type": "text/plain;charset=UTF-8"},
        timeout=10,
    )
    assert response.status_code == 401


def test_a_request_without_a_key_is_refused_before_its_body(server: LiveServer) -> None:
    before = server.rss_kib()
    socks = [connect(server) for _ in range(40)]
    try:
        for sock in socks:
            sock.sendall(
                b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
            )
        started = time.monotonic()
        answers = [read_until_closed(sock) for sock in socks]
        elapsed = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    assert [status_of(a) for a in answers] == [401] * 40
    assert problem_of(answers[0])["type"] == "urn:mirrorpool:problem:unauthorized"
    assert elapsed < READ_TIMEOUT_S  # answered and closed at once, not at the read timeout
    growth_mib = (server.rss_kib() - before) / 1024
    assert growth_mib < 8, f"RSS grew {growth_mib:.1f} MiB"


def slow_request(server: LiveServer) -> socket.socket:
    """A request with a key whose body never finishes arriving."""
    sock = connect(server)
    sock.sendall(
        b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    return sock


def test_a_slow_body_counts_against_its_keys_limit_from_its_headers(server: LiveServer) -> None:
    slow = [slow_request(server) for _ in range(2)]
    try:

        def refused() -> bool:
            response = httpx.post(
                server.url + "/v1/query", json={"sql": "SELECT 1"}, headers=AUTH, timeout=10
            )
            return response.status_code == 429

        # Both slow requests hold their places (from their headers on) until they time out.
        eventually_sync(refused, "a third request to be refused", timeout=READ_TIMEOUT_S)
        answers = [read_until_closed(sock) for sock in slow]
    finally:
        for sock in slow:
            sock.close()
    assert [status_of(a) for a in answers] == [408, 408]
    response = httpx.post(
        server.url + "/v1/query", json={"sql": "SELECT 1"}, headers=AUTH, timeout=10
    )
    assert response.status_code == 200


# With auth disabled (the shared live_server): loopback names only, and no other site.


def test_a_rebound_host_name_is_refused_without_auth(live_server: LiveServer) -> None:
    response = httpx.post(
        live_server.url + "/v1/query",
        json={"sql": "SELECT 1"},
        headers={"Host": f"attacker.example:{live_server.port}"},
        timeout=10,
    )
    assert response.status_code == 403
    assert "loopback" in response.json()["detail"]


def test_a_cross_site_request_is_refused_without_auth(live_server: LiveServer) -> None:
    for origin in ("https://attacker.example", "null", f"http://10.0.0.7:{live_server.port}"):
        response = httpx.post(
            live_server.url + "/v1/query",
            json={"sql": "SELECT 1"},
            headers={"Origin": origin},
            timeout=10,
        )
        assert response.status_code == 403, origin
        assert "other sites" in response.json()["detail"]


def test_loopback_pages_and_names_are_served_without_auth(live_server: LiveServer) -> None:
    for headers in (
        {"Origin": "http://localhost:3000"},
        {"Origin": live_server.url},
        {"Host": f"localhost:{live_server.port}"},
        {"Host": f"[::1]:{live_server.port}", "Origin": f"http://[::1]:{live_server.port}"},
    ):
        response = httpx.post(
            live_server.url + "/v1/query", json={"sql": "SELECT 1"}, headers=headers, timeout=10
        )
        assert response.status_code == 200, (headers, response.text)


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v1/query", b'{"sql": "SELECT 1", "sql": "SELECT 2"}'),
        ("/v1/query", b'{"sql": "SELECT 1", "s\\u0071l": "SELECT 2"}'),
        ("/v1/query", b'{"sql": "SELECT :a::int", "params": {"a": 1, "a": 2}}'),
        ("/v1/query", b'{"sql": "SELECT $1::jsonb", "params": [{"x": {"y": 1, "y": 2}}]}'),
        ("/v1/transaction", b'{"statements": [{"sql": "SELECT 1", "sql": "SELECT 2"}]}'),
        ("/v1/query/stream", b'{"sql": "SELECT 1", "sql": "SELECT 2"}'),
        ("/v1/queries/anything", b'{"params": {"a": 1, "a": 2}}'),
    ],
)
def test_a_key_named_twice_is_400(server: LiveServer, path: str, content: bytes) -> None:
    response = httpx.post(
        server.url + path,
        content=content,
        headers=AUTH | {"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["type"] == "urn:mirrorpool:problem:invalid-request"
    assert "more than once" in problem["detail"]
