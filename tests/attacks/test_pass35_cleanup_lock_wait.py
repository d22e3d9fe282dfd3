"""Pass 34's lead, made an attack: behind PgBouncer, another key held one key's request, and
its server connection, for as long as it liked, through the cleanup after its transaction.

    owner:     CREATE TABLE parent35 (x int); GRANT UPDATE ON parent35 TO the service login
               leave35(), SECURITY DEFINER (a child needs the parent's owner):
                 CREATE TEMP TABLE c35 () INHERITS (parent35), then pg_sleep(0.6)
    key A:     SELECT leave35()                     -> 200 once its transaction has ended
    key B:     LOCK TABLE parent35 IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(4)
               (sent while A's function sleeps: queued behind A's lock, it gets the parent
               as A commits)

A's cleanup after its end (app/sql/pgbouncer.py finish) drops the temporary child with
DISCARD TEMP, which waits for a lock on the parent: it ran under the server's defaults (no
lock timeout, no statement timeout), and nothing stops it once the end is answered. A's
answer came only when B's transaction ended, 4 s later; B's deadline was B's own to choose.

Fixed: the cleanup runs under limits of its own (the request's statement timeout, a 200 ms
lock timeout). A cleanup that fails ends its server session (the unit after it terminates
the backend unless the cleanup marked the session clean), and mirrorpool closes its
connection to the pooler as it reads the failure, so A is answered at once and the pooler
never hands the unclean session on. The dying backend drops the child once B lets go."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import psycopg

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, behind_pgbouncer, query, transaction
from tests.waiting import eventually

SETUP = (
    "CREATE TABLE parent35 (x int)",
    f"GRANT SELECT, UPDATE ON parent35 TO {SERVICE}",
    "CREATE FUNCTION leave35() RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$"
    " BEGIN CREATE TEMP TABLE c35 () INHERITS (parent35); PERFORM pg_sleep(0.6);"
    " RETURN pg_backend_pid(); END $$",
)
TEARDOWN = ("DROP FUNCTION IF EXISTS leave35()", "DROP TABLE IF EXISTS parent35 CASCADE")


def active(pair: LocalPair, pattern: str, waiting: str | None = None) -> bool:
    """Whether another session runs a statement like `pattern` (waiting for a `waiting`)."""
    with psycopg.connect(pair.primary.dsn()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s"
            " AND wait_event_type IS NOT DISTINCT FROM coalesce(%s, wait_event_type)"
            " AND pid <> pg_backend_pid()",
            [pattern, waiting],
        ).fetchone()
    return row is not None and row[0] > 0


def lock_held(pair: LocalPair) -> bool:
    with psycopg.connect(pair.primary.dsn()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = 'parent35'::regclass"
            " AND mode = 'AccessExclusiveLock' AND granted"
        ).fetchone()
    return row is not None and row[0] > 0


def children(pair: LocalPair) -> int:
    with psycopg.connect(pair.primary.dsn()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'parent35'::regclass"
        ).fetchone()
    return int(row[0]) if row else 0


async def test_another_keys_lock_does_not_hold_a_keys_cleanup(
    pair: LocalPair, work_dir: Path
) -> None:
    async with behind_pgbouncer(
        pair, work_dir, SETUP, TEARDOWN, server_connections=3, pool_max_size=3
    ) as (_, _, client):
        await the_lock_holds_up_nobody(pair, client)


async def test_another_keys_lock_does_not_hold_a_keys_reset(pair: LocalPair) -> None:
    """The same on sessions of mirrorpool's own (held before the fix too): A's session is
    not reset in place by a DISCARD ALL that would wait for B's lock; A is answered first."""
    async with attacked_on(pair, SETUP, TEARDOWN, pool_max_size=3) as client:
        await the_lock_holds_up_nobody(pair, client)


async def the_lock_holds_up_nobody(pair: LocalPair, client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    a = asyncio.ensure_future(query(client, "admin", "SELECT leave35()", timeout_ms=5000))
    await eventually(lambda: active(pair, "%leave35()%"), "A's function")
    b = asyncio.ensure_future(
        transaction(
            client,
            "write",
            "LOCK TABLE parent35 IN ACCESS EXCLUSIVE MODE",
            "SELECT pg_sleep(4)",
            timeout_ms=6000,
        )
    )
    await eventually(lambda: active(pair, "LOCK TABLE parent35%", "Lock"), "B queued")
    answer = await a
    took = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    # B still holds its lock: A's answer did not wait for B's transaction to end.
    assert lock_held(pair), f"A's answer waited for B ({took:.1f} s)"
    # The next requests, on any server session, find no child of the parent and no c35.
    other = await query(
        client,
        "read",
        "SELECT to_regclass('pg_temp.c35') IS NULL, count(*) FROM pg_inherits"
        " WHERE inhparent = 'parent35'::regclass",
    )
    assert other.status_code == 200, other.text
    assert other.json()["rows"][0][0] is True
    assert (await b).status_code == 200
    # Once B let go, the child is gone (with A's ended server session, when its cleanup
    # failed).
    await eventually(lambda: children(pair) == 0, "the temporary child gone")
