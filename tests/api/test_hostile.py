"""Hostile input and a schemathesis run against the live service: 4xx problems, never a 500."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.auth import hash_key
from app.devdb import LocalPair
from tests.conftest import LiveServer, as_owner, start_server, stop_server

KEY = "hostile-test-key-0123456789"
HEADERS = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(work_dir: Path, request_path: str) -> Iterator[LiveServer]:
    """A server on a pair of its own: the fuzzer holds an admin key and may well promote
    (one for each request path)."""
    scopes = ["read", "write", "migrate", "admin"]
    keys = [{"id": "fuzz", "sha256": hash_key(KEY), "scopes": scopes}]
    with LocalPair(work_dir / f"hostile-{request_path}") as own:
        as_owner(own, "CREATE TABLE hostile_t (v text)")
        live = start_server(own, MIRRORPOOL_AUTH="keys", MIRRORPOOL_API_KEYS=json.dumps(keys))
        yield live
        stop_server(live)


def post(server: LiveServer, content: bytes | Any, path: str = "/v1/query") -> httpx.Response:
    return httpx.post(
        server.url + path,
        content=content,
        headers=HEADERS | {"content-type": "application/json"},
        timeout=60,
    )


def deep(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("truncated", b'{"sql": "SELECT 1", "params": [1, 2'),
        ("not an object", b'"SELECT 1"'),
        ("wrong types", b'{"sql": ["SELECT 1"], "read_only": "maybe"}'),
        ("NUL in SQL", b'{"sql": "SELECT 1\\u0000"}'),
        ("NUL in a parameter", b'{"sql": "SELECT $1::text", "params": ["\\u0000"]}'),
        ("invalid UTF-8", b'{"sql": "SELECT \'\xc3\x28\'"}'),
        (
            "10,000-deep nesting",
            ('{"sql": "SELECT $1::jsonb", "params": [' + deep(10_000) + "]}").encode(),
        ),
        (
            "70,000 parameters",
            json.dumps({"sql": "SELECT 1", "params": list(range(70_000))}).encode(),
        ),
        ("a number too large for a float", b'{"sql": "SELECT $1::float8", "params": [1e400]}'),
        ("unknown field", b'{"sql": "SELECT 1", "drop": "table"}'),
    ],
)
def test_hostile_bodies_get_4xx_problems(server: LiveServer, name: str, content: bytes) -> None:
    response = post(server, content)
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/problem+json", name
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200


def test_a_100_mb_body_is_refused_without_reading_it(server: LiveServer) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"sql": "SELECT $1::text", "params": ["'
        for _ in range(100):
            yield b"x" * (1024 * 1024)
        yield b'"]}'

    try:
        response = post(server, body())
    except httpx.HTTPError:
        pass  # the server may close the connection as soon as it has answered 413
    else:
        assert response.status_code == 413
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200


def test_huge_integers_and_injection_strings_are_just_values(server: LiveServer) -> None:
    big = 123456789012345678901234567890123456789
    response = post(server, json.dumps({"sql": "SELECT $1::numeric + 1", "params": [big]}).encode())
    assert response.json()["rows"] == [[str(big + 1)]]
    for evil in (
        "'; DROP TABLE hostile_t; --",
        "1 OR 1=1",
        "$1",
        ":name",
        "\\'; SELECT pg_sleep(10)",
    ):
        insert = {"sql": "INSERT INTO hostile_t VALUES ($1) RETURNING v", "params": [evil]}
        assert post(server, json.dumps(insert).encode()).json()["rows"] == [[evil]]
    count = post(server, b'{"sql": "SELECT count(*) FROM hostile_t"}')
    assert count.status_code == 200


def test_unicode_identifiers_survive(server: LiveServer) -> None:
    sql = 'SELECT 1 AS "ünïcödé 名前", :ä::text AS "ä"'
    response = post(server, json.dumps({"sql": sql, "params": {"ä": "ok"}}).encode())
    if response.status_code == 400:
        # `:ä` is not an ASCII placeholder name: it must be refused as a parameter mismatch.
        assert response.json()["type"].endswith("invalid-parameters")
    columns = post(server, json.dumps({"sql": 'SELECT 1 AS "ünïcödé 名前"'}).encode())
    assert columns.json()["columns"][0]["name"] == "ünïcödé 名前"


def test_schemathesis_finds_no_server_error_and_no_schema_breach(
    server: LiveServer, request_path: str
) -> None:
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is installed with the dev extra"
    # Without the fast answers only the routes they answer change hands: every other route
    # is FastAPI's either way, and the [fast] run has tried it.
    only = ["--include-path-regex", "^/(v1/query|v1/transaction|sql)$"]
    result = subprocess.run(
        [st, "run", server.url + "/openapi.json", "-H", f"Authorization: Bearer {KEY}",
         "--max-examples", "15", "--seed", "20261122", "--checks",
         "not_a_server_error,response_schema_conformance,status_code_conformance,"
         "content_type_conformance", *(only if request_path == "fastapi" else [])],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-5000:]
    assert "passed" in result.stdout
