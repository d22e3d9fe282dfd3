"""Streaming and cancellation through a real server process and real sockets."""

from __future__ import annotations

import functools
import json
import socket
import time
import uuid

import httpx

from app.devdb import LocalPair
from tests.conftest import LiveServer, as_owner, start_server, stop_server
from tests.waiting import eventually_sync


def test_stream_sends_columns_rows_and_a_status_line(live_server: LiveServer) -> None:
    with httpx.stream(
        "POST",
        live_server.url + "/v1/query/stream",
        json={
            "sql": "SELECT g AS n, 'row ' || g AS label FROM generate_series(1, $1) g",
            "params": [2500],
            "row_format": "object",
        },
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["x-mirrorpool-node"] == "primary"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[0] == {
        "columns": [
            {"name": "n", "type": "int4", "type_oid": 23},
            {"name": "label", "type": "text", "type_oid": 25},
        ]
    }
    rows = lines[1:-1]
    assert len(rows) == 2500
    assert rows[0] == {"n": 1, "label": "row 1"}
    assert rows[-1] == {"n": 2500, "label": "row 2500"}
    assert lines[-1] == {"row_count": 2500, "command": "SELECT 2500", "status": "ok"}


def test_stream_error_before_rows_is_a_problem(live_server: LiveServer) -> None:
    response = httpx.post(
        live_server.url + "/v1/query/stream", json={"sql": "SELECT * FROM nowhere_t"}, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["sqlstate"] == "42P01"


def test_stream_error_mid_stream_ends_with_an_error_line(live_server: LiveServer) -> None:
    with httpx.stream(
        "POST",
        live_server.url + "/v1/query/stream",
        json={"sql": "SELECT 10 / (5000 - g) FROM generate_series(1, 10000) g"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert "columns" in lines[0]
    assert lines[-1]["status"] == "error"
    assert lines[-1]["error"]["sqlstate"] == "22012"
    assert lines[-1]["row_count"] == len(lines) - 2


def test_a_million_rows_stream_in_flat_memory(live_server: LiveServer) -> None:
    before = live_server.rss_kib()
    peak_before = live_server.rss_kib("VmHWM")
    rows = 0
    with httpx.stream(
        "POST",
        live_server.url + "/v1/query/stream",
        json={
            "sql": "SELECT g, md5(g::text) FROM generate_series(1, 1000000) g",
            "timeout_ms": 120000,
        },
        timeout=120,
    ) as response:
        assert response.status_code == 200
        last = b""
        for line in response.iter_lines():
            if line:
                rows += 1
                last = line.encode()
    assert rows == 1_000_002  # columns + rows + status
    assert json.loads(last) == {"row_count": 1_000_000, "command": "SELECT 1000000", "status": "ok"}
    growth_mib = (live_server.rss_kib("VmHWM") - max(before, peak_before)) / 1024
    assert growth_mib < 50, f"server memory grew by {growth_mib:.1f} MiB"


def running_sleeps(pair: LocalPair, marker: str) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
            [f"%{marker}%"],
        ).fetchone()
    assert row is not None
    return int(row[0])


def send_and_hang_up(server: LiveServer, path: str, body: dict[str, object]) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def test_client_disconnect_cancels_the_statement(live_server: LiveServer, pair: LocalPair) -> None:
    for path in ("/v1/query", "/v1/query/stream", "/v1/transaction"):
        marker = f"cancel_me_{path.replace('/', '_')}"
        sql = f"SELECT pg_sleep(30) AS {marker}"
        body: dict[str, object] = (
            {"statements": [{"sql": sql}]} if path == "/v1/transaction" else {"sql": sql}
        )
        sock = send_and_hang_up(live_server, path, body)
        running = functools.partial(running_sleeps, pair, marker)
        eventually_sync(lambda: running() == 1, "the statement to run")  # noqa: B023
        sock.close()
        started = time.monotonic()
        eventually_sync(lambda: running() == 0, f"the cancellation of {path}")  # noqa: B023
        assert time.monotonic() - started < 2, path
    # The connections went back to the pool clean: the service still answers.
    response = httpx.post(live_server.url + "/v1/query", json={"sql": "SELECT 1"}, timeout=10)
    assert response.json()["rows"] == [[1]]


def test_statements_without_rows_are_sent_to_v1_query(
    live_server: LiveServer, pair: LocalPair
) -> None:
    table = f"stream_no_rows_{uuid.uuid4().hex[:8]}"  # its own, however often it runs
    as_owner(
        pair,
        f"CREATE TABLE {table} (v int)",
        f"GRANT SELECT, INSERT ON {table} TO mirrorpool",
        "CREATE OR REPLACE PROCEDURE stream_no_rows_p() LANGUAGE sql AS $$ SELECT 1 $$",
        "CREATE OR REPLACE PROCEDURE stream_out_p(OUT n int) LANGUAGE sql AS $$ SELECT 7 $$",
    )

    def stream(sql: str) -> httpx.Response:
        return httpx.post(live_server.url + "/v1/query/stream", json={"sql": sql}, timeout=10)

    for sql in (
        f"INSERT INTO {table} VALUES (1)",
        f"UPDATE {table} SET v = 2",
        "SET search_path = public",
        "CALL stream_no_rows_p()",  # decided by the server's description of it
    ):
        response = stream(sql)
        assert response.status_code == 400, (sql, response.text)
        problem = response.json()
        assert problem["type"] == "urn:mirrorpool:problem:invalid-sql", sql
        assert "POST /v1/query" in problem["detail"], sql
        assert "didn't produce a result" not in response.text, sql
    do = stream("DO $$ BEGIN END $$")  # refused everywhere, and saying why
    assert (do.status_code, do.json()["type"]) == (400, "urn:mirrorpool:problem:invalid-sql")
    assert "DO blocks" in do.json()["detail"]
    count = httpx.post(live_server.url + "/v1/query", json={"sql": f"SELECT count(*) FROM {table}"})
    assert count.json()["rows"] == [["0"]]  # the INSERT never ran
    returning = stream(f"INSERT INTO {table} VALUES (5) RETURNING v").text.splitlines()
    assert returning[1] == "[5]"
    out = stream("CALL stream_out_p(NULL)").text.splitlines()
    assert out[1] == "[7]"


def stream_backends(pair: LocalPair, application_name: str) -> list[tuple[str, bool]]:
    """(state, holds a snapshot) of each backend of the pools named `application_name`."""
    with pair.primary.connect() as conn:
        rows = conn.execute(
            "SELECT coalesce(state, ''), backend_xmin IS NOT NULL FROM pg_stat_activity"
            " WHERE application_name = %s",
            [application_name],
        ).fetchall()
    return [(str(state), bool(holds)) for state, holds in rows]


def dead_rows_after_vacuum(pair: LocalPair, table: str) -> int:
    with pair.primary.connect() as conn:
        conn.execute(f"VACUUM {table}")
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s", [table]
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_stream_its_client_stops_reading_is_ended_with_its_transaction(
    pair: LocalPair,
) -> None:
    name = f"mp_stall_{uuid.uuid4().hex[:8]}"
    table = f"stall_{uuid.uuid4().hex[:8]}"
    as_owner(
        pair,
        f"CREATE TABLE {table} (i int) WITH (autovacuum_enabled = off)",
        f"INSERT INTO {table} SELECT generate_series(1, 1000)",
    )
    server = start_server(
        pair, MIRRORPOOL_STREAM_IDLE_TIMEOUT_S="1", MIRRORPOOL_APPLICATION_NAME=name
    )
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        payload = json.dumps(
            {"sql": "SELECT g, repeat('x', 1000) FROM generate_series(1, 5000000) g"}
        ).encode()
        sock.sendall(
            b"POST /v1/query/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
        # The client reads nothing more: the stream's backend waits to write, in its
        # transaction, holding its snapshot, and VACUUM cannot remove what others delete.
        eventually_sync(
            lambda: ("active", True) in stream_backends(pair, name), "the stream to stall"
        )
        as_owner(pair, f"DELETE FROM {table}")
        assert dead_rows_after_vacuum(pair, table) == 1000
        stalled = time.monotonic()
        # (idle and holding no snapshot, all at once: another of the pool's connections may be
        # running the catalog's fingerprint, a snapshot of its own, at any one look)
        eventually_sync(
            lambda: all(
                state == "idle" and not holds for state, holds in stream_backends(pair, name)
            ),
            "the stream's transaction to end",
        )
        assert time.monotonic() - stalled < 1 + 3
        assert dead_rows_after_vacuum(pair, table) == 0
        # The answer was cut off: the connection closes without the stream's last line.
        sock.settimeout(10)
        received = b""
        while chunk := sock.recv(1 << 16):
            received += chunk
        assert b'"status":"ok"' not in received
        assert received, "nothing more came before the connection closed"
    finally:
        sock.close()
        stop_server(server)
        as_owner(pair, f"DROP TABLE IF EXISTS {table}")
