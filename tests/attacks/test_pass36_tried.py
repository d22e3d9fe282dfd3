"""Pass 36's attacks that held (behind PgBouncer, the cleanup after a transaction's end)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import beside_one_server_connection, query, transaction
from tests.attacks.test_pass35_cleanup_lock_wait import active
from tests.waiting import eventually

SETUP = (
    "CREATE TABLE parent36t (x int)",
    f"GRANT SELECT, INSERT ON parent36t TO {SERVICE}",
    "CREATE TABLE log36t (v int)",
    f"GRANT SELECT, INSERT ON log36t TO {SERVICE}",
    "CREATE FUNCTION leave36t() RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$"
    " BEGIN CREATE TEMP TABLE c36t () INHERITS (public.parent36t);"
    " PERFORM pg_catalog.pg_sleep(0.8); RETURN pg_catalog.pg_backend_pid(); END $$",
    "CREATE FUNCTION child36t() RETURNS boolean LANGUAGE sql"
    " AS $$SELECT pg_catalog.to_regclass('pg_temp.c36t') IS NOT NULL$$",
)
TEARDOWN = (
    "DROP FUNCTION IF EXISTS leave36t()",
    "DROP FUNCTION IF EXISTS child36t()",
    "DROP TABLE IF EXISTS parent36t CASCADE",
    "DROP TABLE IF EXISTS log36t",
)


async def test_a_failed_cleanup_keeps_the_commit_and_spares_the_queued_next_key(
    pair: LocalPair, work_dir: Path
) -> None:
    """A's cleanup fails (a lock on the temporary child's parent, held by another session)
    while B's request waits in PgBouncer for the one server connection: A is answered 200
    and its write is committed; B is answered 200 on a new server session.

    The health check shares the pooler's one server connection, and each round holds it for
    A's 0.8 s sleep, the cleanup's 200 ms lock wait and the session's end: under the whole
    suite's load, probes of 1 s failed three times in a row once in seven fresh runs, and B
    was answered 503 "no node is reachable". What is under test is the cleanup, not the
    probe's patience: 10 failures in a row make the node down here."""
    async with beside_one_server_connection(
        pair, work_dir, SETUP, TEARDOWN, health_threshold=10
    ) as (_, client):
        other = await psycopg.AsyncConnection.connect(pair.primary.dsn(), autocommit=True)
        try:
            for round_ in range(2):
                a = asyncio.ensure_future(
                    transaction(
                        client,
                        "write",
                        f"INSERT INTO log36t VALUES ({round_})",
                        "SELECT leave36t()",
                        timeout_ms=5000,
                    )
                )
                await eventually(lambda: active(pair, "%leave36t()%"), "A's function")
                await other.execute("BEGIN")
                lock = asyncio.ensure_future(
                    other.execute("LOCK TABLE parent36t IN ACCESS EXCLUSIVE MODE")
                )
                await eventually(
                    lambda: active(pair, "LOCK TABLE parent36t %", "Lock"), "the lock queued"
                )
                b = asyncio.ensure_future(query(client, "read", "SELECT child36t()"))
                answer, b_answer = await a, await b
                await lock
                await other.execute("ROLLBACK")
                assert answer.status_code == 200, answer.text
                assert b_answer.status_code == 200, b_answer.text
                assert b_answer.json()["rows"] == [[False]], "B found A's temporary child"
                cur = await other.execute("SELECT count(*) FROM log36t WHERE v = %s", [round_])
                assert (await cur.fetchone()) == (1,)
        finally:
            await other.close()


SESSION_DEFAULTS = (
    "CREATE TABLE w36t (v int)",
    f"GRANT SELECT, INSERT ON w36t TO {SERVICE}",
    # (the cleanup's own unit then starts under these defaults, before its RESET ALL)
    "CREATE FUNCTION defaults36t() RETURNS int LANGUAGE plpgsql AS $$ BEGIN"
    " PERFORM pg_catalog.set_config('default_transaction_read_only', 'on', false);"
    " PERFORM pg_catalog.set_config('default_transaction_isolation', 'serializable', false);"
    " PERFORM pg_catalog.set_config('statement_timeout', '1', false);"
    " PERFORM pg_catalog.set_config('lock_timeout', '1', false);"
    " RETURN pg_catalog.pg_backend_pid(); END $$",
)


async def test_session_defaults_left_for_the_cleanup_do_not_reach_the_next_key(
    pair: LocalPair, work_dir: Path
) -> None:
    """A's code sets session defaults that the cleanup's own unit starts under (read only,
    serializable, 1 ms statement and lock timeouts): the cleanup still succeeds or ends the
    session; B's write on the one server connection commits under B's own limits."""
    async with beside_one_server_connection(
        pair,
        work_dir,
        SESSION_DEFAULTS,
        ("DROP FUNCTION IF EXISTS defaults36t()", "DROP TABLE IF EXISTS w36t"),
    ) as (_, client):
        a = await query(client, "write", "SELECT defaults36t()")
        assert a.status_code == 200, a.text
        b = await transaction(
            client,
            "write",
            "INSERT INTO w36t VALUES (1)",
            "SELECT current_setting('transaction_isolation'), pg_sleep(0.05)",
        )
        assert b.status_code == 200, b.text
        assert b.json()["results"][1]["rows"][0][0] == "read committed"
