"""Twentieth review pass (attacker): behind PgBouncer, a write key's plain write whose
deferred constraint checks run at its commit holds the shared server connection past the
statement timeout, and another key's request waits for it.

Behind PgBouncer a statement runs in a transaction of its own (app/sql/pgbouncer.py run:
BEGIN with the limits, the statement, COMMIT), with no `SET CONSTRAINTS ALL IMMEDIATE`
(pass 17 added it to the plain path and the lanes of sessions of mirrorpool's own only).
PostgreSQL ends the statement timeout before a commit's work, so the checks of a DEFERRABLE
INITIALLY DEFERRED foreign key run unbounded, until mirrorpool's guard gives up at the
deadline plus its grace and drops its connection to the pooler: the write key is answered
503 outcome-unknown for a write that was undone, and, the server connection being shared by
every client of the pooler, another key's `SELECT 1` waited for it all that time (1.4 s
under a 500 ms statement timeout, here with one server connection):

    write key:  DELETE FROM parent20b WHERE id <= $1::int       params [2000]
    admin key:  SELECT 1 AS one                                  (sent 0.1 s later)

Nothing of the database's own is needed: a table with a deferred foreign key that the
write key may write to, whose child column has no index.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from app.devdb import OWNER, SERVICE, LocalPair
from tests.attacks.conftest import keys_for, query
from tests.attacks.test_pgbouncer_sessions import bouncer  # noqa: F401
from tests.conftest import as_owner, serving_ready, settings_for
from tests.pgbouncer import LocalPgBouncer

TIMEOUT_MS = 500


@pytest_asyncio.fixture
async def behind(
    pair: LocalPair,
    bouncer: LocalPgBouncer,  # noqa: F811
    world: dict[str, str],
) -> AsyncIterator[httpx.AsyncClient]:
    as_owner(
        pair,
        "DROP TABLE IF EXISTS child20b, parent20b",
        "CREATE TABLE parent20b (id int PRIMARY KEY)",
        "CREATE TABLE child20b (parent int REFERENCES parent20b DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO parent20b SELECT g FROM generate_series(1, 4000) g",
        "INSERT INTO child20b SELECT 4000 FROM generate_series(1, 100000)",
        "ANALYZE parent20b",
        "ANALYZE child20b",
    )
    settings = settings_for(
        pair,
        primary_dsn=bouncer.dsn("postgres", user=SERVICE),
        mirror_dsn=None,
        pgbouncer=True,
        migrations_dsn=pair.primary.dsn("postgres", user=OWNER),
        auth="keys",
        api_keys=[k for k in keys_for(world["role"]) if "role" not in k],
        pool_min_size=1,
        pool_max_size=2,
        health_threshold=3,
        statement_timeout_ms=TIMEOUT_MS,
    )
    async with serving_ready(settings) as (_, client):
        yield client


def parents(pair: LocalPair) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM parent20b").fetchone()
    return int(row[0]) if row else 0


async def test_deferred_checks_behind_pgbouncer_stop_within_the_statement_timeout(
    behind: httpx.AsyncClient, pair: LocalPair
) -> None:
    async def victim() -> tuple[int, float]:
        await asyncio.sleep(0.1)  # (sent once the write is on the server connection)
        started = time.monotonic()
        r = await query(behind, "admin", "SELECT 1 AS one")
        return r.status_code, round(time.monotonic() - started, 2)

    write, (status, waited) = await asyncio.gather(
        query(behind, "write", "DELETE FROM parent20b WHERE id <= $1::int", params=[2000]),
        victim(),
    )
    assert parents(pair) == 4000  # undone
    assert status == 200
    # the other key waited no longer than the write's statement timeout (plus a margin)
    assert waited < TIMEOUT_MS / 1000 + 0.4, f"another key's SELECT 1 waited {waited} s"
    assert write.status_code == 504, write.text  # stopped by the server, undone
