"""Pass 38: behind PgBouncer, another key held one key's answer, and its server connection,
through the cleanup after its transaction, by the defaults the database's own code left.

    owner:  defer38(), SECURITY DEFINER: set_config(..., false) of
            default_transaction_isolation 'serializable', default_transaction_read_only on,
            default_transaction_deferrable on (each a session default, kept at the COMMIT)
    key B:  a serializable transaction that writes, then SELECT pg_sleep(4)
    key A:  SELECT defer38()                       -> 200 once its transaction has ended

A's cleanup after its end (app/sql/pgbouncer.py finish) is a unit of its own, in an
implicit transaction that takes its characteristics from the session's defaults as it
starts: serializable, read only, deferrable. Its RESET ALL comes too late for that
transaction, and the cleanup's first statement that needs a snapshot waits for a safe one:
until every serializable read-write transaction running then (B's) has ended. No lock
timeout bounds that wait, and RESET ALL had just lifted the statement timeout. So A was
answered only when B's transaction ended, 4 s later; B's deadline was B's own to choose.
The unit that ends an unclean session runs under those defaults too, but only after a
failed cleanup, when mirrorpool has shut its socket and the pooler has let the server go.

Fixed: the cleanup first sets its own transaction's isolation (SET TRANSACTION ISOLATION
LEVEL READ COMMITTED), before anything takes a snapshot.

On sessions of mirrorpool's own the same defaults, SET by a key itself (a reporting client's
"safe" read-only defaults), held that key's answer past its deadline: a session with
settings of its own is reset with DISCARD ALL as its connection goes back, and DISCARD ALL,
in a transaction of those characteristics, waited for a safe snapshot while another key's
serializable transaction ran. Fixed: the reset starts with RESET ALL, which takes no
snapshot (app/sql/session.py restore)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path

import httpx
import psycopg

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, behind_pgbouncer, query, transaction
from tests.waiting import eventually

SETUP = (
    "CREATE TABLE t38 (x int)",
    f"GRANT SELECT, INSERT ON t38 TO {SERVICE}",
    "CREATE FUNCTION defer38() RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN"
    " PERFORM set_config('default_transaction_isolation', 'serializable', false),"
    " set_config('default_transaction_read_only', 'on', false),"
    " set_config('default_transaction_deferrable', 'on', false);"
    " RETURN pg_backend_pid(); END $$",
)
TEARDOWN = ("DROP FUNCTION IF EXISTS defer38()", "DROP TABLE IF EXISTS t38")
B_SLEEPS_S = 4


def b_sleeps(pair: LocalPair) -> bool:
    """Whether B's serializable transaction is in its sleep."""
    with psycopg.connect(pair.primary.dsn()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
            " AND query LIKE 'SELECT pg_sleep(%%' AND pid <> pg_backend_pid()"
        ).fetchone()
    return row is not None and row[0] > 0


async def test_defaults_left_by_code_do_not_hold_a_keys_cleanup(
    pair: LocalPair, work_dir: Path
) -> None:
    async with behind_pgbouncer(
        pair, work_dir, SETUP, TEARDOWN, server_connections=3, pool_max_size=3
    ) as (_, _, client):
        await a_is_answered_while_b_sleeps(pair, client)


async def test_defaults_left_by_code_on_own_sessions(pair: LocalPair) -> None:
    """The same on sessions of mirrorpool's own (held before the fix too): a connection
    that ran the database's own code is closed, not reset in place."""
    async with attacked_on(pair, SETUP, TEARDOWN, pool_max_size=3) as client:
        await a_is_answered_while_b_sleeps(pair, client)


async def test_defaults_a_key_sets_do_not_hold_its_reset(pair: LocalPair) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN, pool_max_size=3) as client:
        b = asyncio.ensure_future(b_sleeping(client))
        await eventually(lambda: b_sleeps(pair), "B's serializable transaction asleep")
        started = time.monotonic()
        a = await transaction(
            client,
            "admin",
            "SET default_transaction_isolation = serializable",
            "SET default_transaction_read_only = on",
            "SET default_transaction_deferrable = on",
            timeout_ms=1000,
        )
        took = time.monotonic() - started
        assert a.status_code == 200, a.text
        assert b_sleeps(pair), f"A's answer waited for B's transaction to end ({took:.1f} s)"
        assert (await b).status_code == 200


def b_sleeping(client: httpx.AsyncClient) -> Awaitable[httpx.Response]:
    """B's serializable transaction: a write, then a sleep."""
    return transaction(
        client,
        "write",
        "INSERT INTO t38 VALUES (1)",
        f"SELECT pg_sleep({B_SLEEPS_S})",
        isolation="serializable",
        timeout_ms=(B_SLEEPS_S + 2) * 1000,
    )


async def a_is_answered_while_b_sleeps(pair: LocalPair, client: httpx.AsyncClient) -> None:
    b = asyncio.ensure_future(b_sleeping(client))
    await eventually(lambda: b_sleeps(pair), "B's serializable transaction asleep")
    started = time.monotonic()
    a = await query(client, "admin", "SELECT defer38()", timeout_ms=(B_SLEEPS_S + 2) * 1000)
    took = time.monotonic() - started
    assert a.status_code == 200, a.text
    assert b_sleeps(pair), f"A's answer waited for B's transaction to end ({took:.1f} s)"
    # The next requests (A's key: B's holds its share) run under the server's defaults: a
    # write commits, at once.
    for _ in range(3):
        started = time.monotonic()
        other = await transaction(
            client,
            "admin",
            "SELECT current_setting('transaction_isolation'),"
            " current_setting('transaction_read_only')",
            "INSERT INTO t38 VALUES (2)",
        )
        assert other.status_code == 200, other.text
        assert other.json()["results"][0]["rows"] == [["read committed", "off"]]
        assert time.monotonic() - started < 1, "the next key waited for B"
    assert (await b).status_code == 200
