"""Thirty-third review pass (attacker), its hole: behind PgBouncer, what one key's code left
at a COMMIT that failed was paid for by the next key, under its own deadline.

    owner:     CREATE CONSTRAINT TRIGGER c33 AFTER INSERT ON t33 DEFERRABLE INITIALLY
               DEFERRED FOR EACH ROW EXECUTE FUNCTION trig33()
               -- trig33: n > 0: SET CONSTRAINTS ALL DEFERRED; INSERT INTO t33 (n - 1, v)
               --         n = 0: PREPARE 80 000 statements, then RAISE
    write key: INSERT INTO t33 VALUES (2, '80000')                   -> 400 (refused)
    read key:  SELECT own33()  (timeout_ms 250, about 10 ms alone)   -> 504, 504, 504, 200

The COMMIT's failure skipped the cleanup after it, which was in the same query, and the
statements stayed on the server connection. The next transaction whose statements may run
code of the database's own drops what SQL PREPAREd there first (pass 27), in its opening:
under that key's own statement timeout, 80 000 of them at a time.

Fixed (app/sql/pgbouncer.py finish): the cleanup after the end is a unit of its own, sent in
the same write as the unit that ends the transaction. PgBouncer keeps the server connection
for its client until every Sync it was sent is answered, so the cleanup runs on that server
session whether the COMMIT succeeded or failed, within the request that left the statements.
While it runs the request's deadline and its client leaving wait for it: the pooler would
otherwise hand the server session on with the cleanup still running there (a client gone
between the two answers finds its server "ready"), and the next client would read the
cleanup's answers as its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from app.devdb import SERVICE, LocalPair
from app.sql.session import DEALLOCATE_SQL_PREPARED
from tests.api.test_stream import send_and_hang_up
from tests.attacks.conftest import behind_one_server_connection, query, transaction
from tests.attacks.test_pass33_tried import (
    FLOOD_SETUP,
    FLOOD_TEARDOWN,
    LEFT,
    VICTIM,
    VICTIM_TIMEOUT_MS,
)
from tests.conftest import as_owner, start_server, stop_server
from tests.pgbouncer import LocalPgBouncer
from tests.waiting import eventually, eventually_sync

INSERT = f"INSERT INTO t33 VALUES (2, '{LEFT}')"


async def the_victim_answers_in_time(client: httpx.AsyncClient) -> None:
    """The read key's own-code statement, on the one server connection, answers within its
    timeout each time: it pays for nothing of the write key's."""
    for _ in range(3):
        started = time.monotonic()
        r = await query(client, "read", VICTIM, timeout_ms=VICTIM_TIMEOUT_MS)
        answered_in_time(r, time.monotonic() - started)


def answered_in_time(r: httpx.Response, took: float) -> None:
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[1]], r.text
    assert took < VICTIM_TIMEOUT_MS / 1000, took


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("route", ["query", "transaction"])
async def test_leftovers_of_a_failed_commit_cost_the_next_key_nothing(
    pair: LocalPair, work_dir: Path, route: str
) -> None:
    async with behind_one_server_connection(pair, work_dir, FLOOD_SETUP, FLOOD_TEARDOWN) as client:
        if route == "query":
            r = await query(client, "write", INSERT, timeout_ms=5000)
        else:
            r = await transaction(client, "write", "SELECT 1", INSERT, timeout_ms=5000)
        assert r.status_code == 400 and "refused" in r.text, r.text
        await the_victim_answers_in_time(client)


def cleanup_running(pair: LocalPair) -> bool:
    """Whether a server session of the service's login is dropping SQL-prepared statements
    as a statement of its own: the cleanup unit after a transaction's end."""
    with psycopg.connect(pair.primary.dsn()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE usename = %s AND state = 'active' AND query = %s",
            [SERVICE, DEALLOCATE_SQL_PREPARED],
        ).fetchone()
    return row is not None and row[0] > 0


@pytest.mark.asyncio(loop_scope="module")
async def test_a_request_cancelled_during_its_cleanup_leaves_the_next_key_a_clean_server(
    pair: LocalPair, work_dir: Path
) -> None:
    async with behind_one_server_connection(pair, work_dir, FLOOD_SETUP, FLOOD_TEARDOWN) as client:
        attack = asyncio.ensure_future(query(client, "write", INSERT, timeout_ms=5000))
        await eventually(lambda: cleanup_running(pair), "the cleanup after the COMMIT")
        attack.cancel()  # (in-process: the request's own task is cancelled mid-cleanup)
        with pytest.raises(asyncio.CancelledError):
            await attack
        await the_victim_answers_in_time(client)


def test_a_client_gone_during_the_cleanup_leaves_the_next_client_a_clean_server(
    pair: LocalPair, work_dir: Path
) -> None:
    """A real client that hangs up while the cleanup runs (the request's abort ends its
    connection, as a deadline does). The server session goes on to the next client only once
    the cleanup is over: the next client's statement, sent at once, gets its own answer (on
    a connection of its own, to the pooler's one server connection), and pays nothing for
    the statements left. (A service of its own, on the service's login: auth off.)"""
    as_owner(pair, *FLOOD_SETUP)
    try:
        with LocalPgBouncer(pair, work_dir / f"b33-{time.monotonic_ns()}", pool_size=1) as b:
            server = start_server(
                pair,
                MIRRORPOOL_MIRROR_DSN="",
                MIRRORPOOL_PRIMARY_DSN=b.dsn("postgres", user=SERVICE),
                MIRRORPOOL_PGBOUNCER="true",
                MIRRORPOOL_POOL_MIN_SIZE="2",
                MIRRORPOOL_POOL_MAX_SIZE="2",
                # (the health probes wait for the one server connection too)
                MIRRORPOOL_HEALTH_TIMEOUT="5",
                MIRRORPOOL_HEALTH_THRESHOLD="3",
            )

            def victim() -> tuple[httpx.Response, float]:
                started = time.monotonic()
                body = {"sql": VICTIM, "timeout_ms": VICTIM_TIMEOUT_MS}
                r = httpx.post(server.url + "/v1/query", json=body, timeout=10)
                return r, time.monotonic() - started

            try:
                flood = f"INSERT INTO t33 VALUES (2, '{2 * LEFT}')"
                sock = send_and_hang_up(server, "/v1/query", {"sql": flood, "timeout_ms": 9000})
                running: Callable[[], bool] = lambda: cleanup_running(pair)  # noqa: E731
                eventually_sync(running, "the cleanup after the COMMIT")
                sock.close()
                r, _ = victim()  # (it waits for the one server connection)
                assert r.status_code == 200, r.text
                assert r.json()["rows"] == [[1]], r.text
                eventually_sync(lambda: not running(), "the cleanup to end")
                for _ in range(3):
                    answered_in_time(*victim())
            finally:
                stop_server(server)
    finally:
        as_owner(pair, *FLOOD_TEARDOWN)
