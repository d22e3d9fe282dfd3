"""Thirty-first review pass (attacker): what held.

- PostgreSQL itself keeps a transaction's SET LOCAL lock_timeout for the code its COMMIT
  runs (a deferred trigger waiting for a lock fails with 55P03); only a RESET ALL before
  the COMMIT lifts it, and the trigger then waits as long as the lock is held
  (test_pass31_commit_without_limits.py). Checked on connections of the harness, both
  ways. (statement_timeout is no limit at a COMMIT either way: PostgreSQL disables it for
  the commit's work; what stops a COMMIT's code whose client left is the check of the
  client, client_connection_check_interval, which RESET ALL resets as well.)
- Behind PgBouncer, the same waiting trigger fired by a single write (its BEGIN sets the
  constraints IMMEDIATE, so the trigger runs in the INSERT) stops at the request's
  statement timeout; and in a /v1/transaction, fired by the cleanup's SET CONSTRAINTS ALL
  IMMEDIATE (before its RESET ALL), it stops too: the backend is gone within a few seconds.
"""

from __future__ import annotations

import threading
import time

import httpx
import psycopg
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import query, sleepers, transaction
from tests.attacks.test_pass31_commit_without_limits import behind  # noqa: F401

pytestmark = pytest.mark.asyncio(loop_scope="module")


def commit_with_local_lock_timeout(pair: LocalPair, reset_first: bool) -> str:
    """A COMMIT whose deferred trigger waits for an advisory lock another session holds for
    1.5 s, under SET LOCAL lock_timeout 300 ms (and statement_timeout, which PostgreSQL
    lifts for a commit's work anyway): its sqlstate, or 'committed' once the lock came."""
    with pair.primary.connect() as holder, pair.primary.connect() as conn:
        holder.autocommit = conn.autocommit = True
        conn.execute(
            "CREATE TEMP TABLE w31 (n int);"
            " CREATE FUNCTION pg_temp.s31() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_advisory_xact_lock(3131); RETURN NULL; END $$;"
            " CREATE CONSTRAINT TRIGGER c31 AFTER INSERT ON pg_temp.w31 DEFERRABLE"
            " INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_temp.s31()"
        )
        holder.execute("SELECT pg_advisory_lock(3131)")
        releasing = threading.Timer(1.5, lambda: holder.execute("SELECT pg_advisory_unlock_all()"))
        releasing.start()
        reset = " RESET ALL;" if reset_first else ""
        try:
            conn.execute(
                "BEGIN; SET LOCAL lock_timeout = 300; SET LOCAL statement_timeout = 300;"
                f" INSERT INTO pg_temp.w31 VALUES (1);{reset} COMMIT"
            )
        except psycopg.Error as exc:
            return str(exc.sqlstate)
        finally:
            releasing.join()
        return "committed"


@pytest.mark.parametrize(("reset_first", "ends"), [(False, "55P03"), (True, "committed")])
async def test_postgresql_keeps_a_local_lock_timeout_at_the_commit_unless_reset(
    pair: LocalPair, reset_first: bool, ends: str
) -> None:
    assert commit_with_local_lock_timeout(pair, reset_first) == ends


async def gone_soon(client: httpx.AsyncClient, pair: LocalPair) -> None:
    gone_by = time.monotonic() + 4
    while sleepers(pair) and time.monotonic() < gone_by:
        await client.get("/health/live")
    assert sleepers(pair) == 0


async def test_a_wait_in_the_write_itself_stops_at_its_timeout_behind_pgbouncer(
    behind: httpx.AsyncClient,  # noqa: F811
    pair: LocalPair,
) -> None:
    r = await query(behind, "write", "INSERT INTO t31 VALUES (0)", timeout_ms=300)
    assert r.status_code in (400, 504), r.text
    await gone_soon(behind, pair)


async def test_a_wait_at_the_cleanups_immediate_stops_behind_pgbouncer(
    behind: httpx.AsyncClient,  # noqa: F811
    pair: LocalPair,
) -> None:
    r = await transaction(
        behind, "write", "INSERT INTO t31 VALUES (0)", "SELECT 1 AS one", timeout_ms=300
    )
    assert r.status_code in (400, 503, 504), r.text
    await gone_soon(behind, pair)
