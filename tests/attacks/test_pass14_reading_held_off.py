"""Fourteenth review pass (attacker): a write key keeps the catalog from being read, and the
facts stay the old ones, KNOWN, for as long as it likes.

The full reading of app/sql/schema_code.py prints every default and check back with
pg_get_expr(), which opens its table with an AccessShareLock; the reading's transaction has
lock_timeout 500 ms (app/sql/engine.py _CATALOG_LIMITS), and a reading that fails "leaves
the facts as they were". The service's login may UPDATE the schema's tables (the default
privileges of app/devdb/logins.py, as the README recommends), so a write key may

    {"statements": [{"sql": "LOCK TABLE stamped_at14 IN ACCESS EXCLUSIVE MODE"},
                    {"sql": "SELECT pg_sleep(5)"}], "timeout_ms": 8000}

for up to MIRRORPOOL_MAX_STATEMENT_TIMEOUT_MS (300 s) a request, and again, on any table
with a column default. While it does, no reading completes: a schema change made meanwhile
(here a new view whose reading takes a session advisory lock, as a migration or psql would
make it) is never seen, the old facts stay KNOWN, and a read key's query of the new view is
a pure read with Effect.NONE: the lock stays on the pooled connection for the next key. The
known window of MIRRORPOOL_SCHEMA_REFRESH_S (a second) becomes as long as the write key
holds its lock.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, headers, query, schema_seen, transaction
from tests.conftest import as_owner
from tests.waiting import eventually

HOLD = "LOCK TABLE stamped_at14 IN ACCESS EXCLUSIVE MODE"


@pytest.fixture
def overrides() -> dict[str, Any]:
    # the lock holder, the catalog reading and the attack each need a connection
    return {"pool_max_size": 4}


@pytest.fixture
async def tables(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE TABLE IF NOT EXISTS public.stamped_at14 (id int, at timestamptz DEFAULT now())",
        "CREATE OR REPLACE FUNCTION public.claim14v() RETURNS bool LANGUAGE sql"
        " AS $$ SELECT pg_try_advisory_lock(1451) $$",
        "DROP VIEW IF EXISTS public.late_view14",
    )
    await schema_seen(client)


def lock_held(pair: LocalPair) -> bool:
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = 'public.stamped_at14'::regclass"
            " AND mode = 'AccessExclusiveLock' AND granted"
        ).fetchone()
    return row is not None and int(row[0]) > 0


async def read_since(client: httpx.AsyncClient, made: datetime, within_s: float) -> bool:
    """Whether the service reads the catalog after `made` within `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        r = await client.get("/pool/stats", headers=headers("admin"))
        read_at = r.json()["schema_code"]["read_at"]
        if read_at is not None and datetime.fromisoformat(read_at) > made:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_held_table_lock_does_not_keep_a_new_view_unseen(
    client: httpx.AsyncClient, pair: LocalPair, tables: None
) -> None:
    holder = asyncio.ensure_future(
        transaction(client, "write", HOLD, "SELECT pg_sleep(5)", timeout_ms=8000)
    )
    try:
        await eventually(lambda: lock_held(pair), "the write key to hold its table lock", 5)
        made = datetime.now(UTC)
        as_owner(
            pair,
            "CREATE VIEW public.late_view14 AS SELECT public.claim14v() AS claimed",
        )
        seen = await read_since(client, made, 2.0)
        assert advisory_locks(pair) == 0
        r = await query(client, "read", "SELECT claimed FROM late_view14")
        assert r.status_code == 200, r.text
        assert (await query(client, "admin", "SELECT 1")).status_code == 200
        assert advisory_locks(pair) == 0, (
            f"a session lock outlived a read of a view made while a write key held a table "
            f"lock (catalog read again within 2 s: {seen})"
        )
    finally:
        held = await holder
        assert held.status_code == 200, held.text
