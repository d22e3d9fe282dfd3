"""Thirty-sixth review pass (attacker), its hole: behind PgBouncer, a cleanup cut short must
end its server session (unit 3 terminates the backend unless unit 2 marked it clean). It did
not. The mark's test in unit 3 is
`current_setting('mirrorpool.cleaned', true) = '<mark>'`: an unqualified `=`, resolved on
the session's search_path, which the failed unit 2 (its RESET ALL rolled back with it) left
as the attacker's code set it.

    owner:   OPERATOR public.= (text, text) that is always true (eq36), table parent36;
             leave36(), SECURITY DEFINER: CREATE TEMP TABLE c36 () INHERITS (parent36),
             set_config('search_path', 'public, pg_catalog', false), pg_sleep(0.5)
    key A:   SELECT leave36()
    other:   (any session, e.g. another key's request on another server connection)
             LOCK TABLE parent36 IN ACCESS EXCLUSIVE MODE while A's function sleeps, held
    A's cleanup: DISCARD TEMP waits for the parent: lock timeout, unit 2 fails and rolls
             back (search_path stays public, pg_catalog); unit 3's `=` is public's: true,
             so it takes the session as clean and does not terminate it; mirrorpool's shut
             of its socket comes after PgBouncer had every Sync answered: the server goes
             back to the pool as ready.
    key B:   SELECT 'genuine'::text = 'forged', pid36(), probe36()
             (the only server connection: A's)

Observed: B runs on the very backend A's cleanup failed on (same pid), with A's search_path
(public, pg_catalog) and A's temporary child c36 still there; B's 'genuine' = 'forged'
answers true (public.= through A's search_path). Expected: A's server session ended (or
B on a clean one); B's comparison false. (The test tries up to ROUNDS times: in some rounds
A's cleanup runs before the other session's lock is granted, and succeeds.)

Cause: unit 3 trusts the session it tests: its `=` is not pg_catalog.=, and after a failed
unit 2 the session's search_path is whatever A's code set (the RESET ALL went with the
failed unit). The same forged operator could raise instead: unit 3 errors, the backend is
not terminated, and PgBouncer, every Sync answered, takes the server as ready when
mirrorpool shuts its socket (the "raising" case: observed the same, B on A's backend with
A's search_path and child).

Fixed (app/sql/pgbouncer.py _CLEAN_OR_END_SQL): unit 3 names its operator and functions by
schema (OPERATOR(pg_catalog.=)), and is a DO block that ends the session on any error of its
own as well, query_canceled included."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import beside_one_server_connection, query
from tests.attacks.test_pass35_cleanup_lock_wait import active
from tests.waiting import eventually

# The forged operator's code: always true (unit 3 takes the session as clean), or an error
# (unit 3 fails before its pg_terminate_backend).
ALWAYS_TRUE = "LANGUAGE sql IMMUTABLE AS 'SELECT true'"
RAISING = (
    "LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'no terminate' USING ERRCODE = 'P0001'; END $$"
)
SETUP = (
    "CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.eq36)",
    "CREATE TABLE parent36 (x int)",
    f"GRANT SELECT ON parent36 TO {SERVICE}",
    "CREATE FUNCTION leave36() RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$"
    " BEGIN CREATE TEMP TABLE c36 () INHERITS (public.parent36);"
    " PERFORM pg_catalog.set_config('search_path', 'public, pg_catalog', false);"
    " PERFORM pg_catalog.pg_sleep(0.5); RETURN pg_catalog.pg_backend_pid(); END $$",
    "CREATE FUNCTION pid36() RETURNS int LANGUAGE sql AS 'SELECT pg_catalog.pg_backend_pid()'",
    "CREATE FUNCTION probe36() RETURNS text LANGUAGE sql AS $$SELECT"
    " pg_catalog.current_setting('search_path') || ' ' || (pg_catalog.to_regclass('pg_temp.c36')"
    " IS NOT NULL)::text$$",
)
ROUNDS = 5
TEARDOWN = (
    "DROP FUNCTION IF EXISTS leave36()",
    "DROP FUNCTION IF EXISTS pid36()",
    "DROP FUNCTION IF EXISTS probe36()",
    "DROP TABLE IF EXISTS parent36 CASCADE",
    "DROP OPERATOR IF EXISTS public.= (text, text)",
    "DROP FUNCTION IF EXISTS public.eq36(text, text)",
)


@pytest.mark.parametrize(
    ("code", "b_sql"),
    [
        (ALWAYS_TRUE, "SELECT 'genuine'::text = 'forged', pid36(), probe36()"),
        (RAISING, "SELECT NULL::boolean, pid36(), probe36()"),
    ],
    ids=["forged-true", "raising"],
)
async def test_a_failed_cleanup_whose_mark_test_is_forged_reaches_the_next_key(
    pair: LocalPair, work_dir: Path, code: str, b_sql: str
) -> None:
    setup = (f"CREATE FUNCTION public.eq36(text, text) RETURNS boolean {code}", *SETUP)
    async with beside_one_server_connection(pair, work_dir, setup, TEARDOWN) as (_, client):
        other = await psycopg.AsyncConnection.connect(pair.primary.dsn(), autocommit=True)
        try:
            # (A's cleanup does not always reach the lock: up to ROUNDS tries, each clean
            # when the cleanup ran before the lock was granted)
            for _ in range(ROUNDS):
                answer, b = await a_cleanup_cut_short(
                    pair, client, other, "leave36", "parent36", b_sql
                )
                assert answer.status_code == 200, answer.text
                a_pid = answer.json()["rows"][0][0]
                assert b.status_code == 200, b.text
                (equal, b_pid, probe), *_ = b.json()["rows"]
                assert b_pid != a_pid or probe == '"$user", public false', (
                    f"B ran on A's unclean server session (pid {b_pid}: search_path, temporary"
                    f" child: {probe}); B's 'genuine' = 'forged' answered {equal}"
                )
        finally:
            await other.close()


async def a_cleanup_cut_short(
    pair: LocalPair,
    client: httpx.AsyncClient,
    other: psycopg.AsyncConnection[Any],
    leave: str,
    parent: str,
    probe: str,
) -> tuple[httpx.Response, httpx.Response]:
    """Key A ("write") runs `SELECT <leave>()`; while it sleeps `other` queues an ACCESS
    EXCLUSIVE lock on `parent`, granted as A commits, so A's cleanup waits for it past its
    lock timeout; then key B ("read") runs `probe`, on the one server connection. A's answer
    and B's, with the lock let go."""
    a = asyncio.ensure_future(query(client, "write", f"SELECT {leave}()", timeout_ms=5000))
    await eventually(lambda: active(pair, f"%{leave}()%"), "A's function")
    await other.execute("BEGIN")
    await other.execute("SET LOCAL lock_timeout = '8s'")
    # (queued behind A's lock on the parent: granted as A commits, and held)
    lock = asyncio.ensure_future(other.execute(f"LOCK TABLE {parent} IN ACCESS EXCLUSIVE MODE"))
    await eventually(lambda: active(pair, f"LOCK TABLE {parent} %", "Lock"), "the lock queued")
    answer = await a
    await lock
    b = await query(client, "read", probe)
    await other.execute("ROLLBACK")
    return answer, b
