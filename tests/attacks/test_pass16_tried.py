"""Sixteenth review pass (attacker): what was tried and held.

- a view over a whole-row cast of the schema's own (pub16_lengths): known by its rule's
  dependency on the cast, so its read is reset; (`text(p)`, the cast in call notation, does not
  resolve to a cast for a row type);
- the catalog reading on a judged connection steered by the session without temporary
  types (a search path naming pg_temp first only: the reading's tables and functions are
  qualified, and pg_temp is never searched for functions or operators);
- the same steering with a temporary *table* named regclass (its row type shadows the type):
  the reading fails, the connection is closed, nothing wrong is published;
- the steering by a role key: a role pool's connection is judged by the watch's own reading
  (facts_since), never on itself;
- a lock that is not ACCESS EXCLUSIVE (SHARE ROW EXCLUSIVE) on a relation whose code the
  reading prints, held across a full reading: the reading goes on (the printing takes
  ACCESS SHARE locks only);
- a call into another session's temporary schema (pg_temp_1.f()): refused like pg_temp's.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, headers, query, transaction
from tests.attacks.test_pass16_steered_reading import leaks_while, overrides, view_with_cast
from tests.conftest import as_owner
from tests.waiting import eventually

__all__ = ["overrides", "view_with_cast"]

STEERINGS = {
    "search-path-naming-pg-temp-first-only": (
        "write",
        (
            "SET search_path = pg_temp, pg_catalog",
            "DROP TABLE IF EXISTS nothing16",
            "SELECT count(*) FROM public.pub",
        ),
    ),
    "temp-table-named-regclass": (
        "write",
        (
            "SET search_path = pg_temp, pg_catalog",
            "CREATE TEMP TABLE regclass (a int)",
            "CREATE DOMAIN pg_temp.text AS pg_catalog.varchar(1)",
            "DROP TABLE IF EXISTS nothing16",
            "SELECT count(*) FROM public.pub",
        ),
    ),
    "role-key-steering-its-role-pool": (
        "role",
        (
            "SET search_path = pg_temp, pg_catalog",
            "CREATE DOMAIN pg_temp.regclass AS pg_catalog.regtype",
            "CREATE DOMAIN pg_temp.text AS pg_catalog.varchar(1)",
            "DROP TABLE IF EXISTS nothing16",
            "SELECT count(*) FROM public.pub",
        ),
    ),
}


@pytest.mark.parametrize(
    "attack",
    ["SELECT n FROM pub16_lengths", "SELECT max(n) FROM (SELECT n FROM pub16_lengths) s"],
    ids=["view-over-a-whole-row-cast", "view-over-a-whole-row-cast-in-a-subquery"],
)
async def test_a_whole_row_cast_that_is_reset(
    client: httpx.AsyncClient, view_with_cast: None, pair: LocalPair, attack: str
) -> None:
    r = await query(client, "read", attack)
    assert r.status_code == 200, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0


@pytest.mark.parametrize("name", list(STEERINGS), ids=list(STEERINGS))
async def test_steering_that_held(
    client: httpx.AsyncClient, view_with_cast: None, pair: LocalPair, name: str
) -> None:
    key, statements = STEERINGS[name]
    leaks = await leaks_while(client, pair, key, statements, 8)
    assert not leaks, f"{name}: {len(leaks)} session locks left by a read key's view reads"


async def test_a_share_row_exclusive_lock_does_not_hold_a_reading(
    client: httpx.AsyncClient, view_with_cast: None, pair: LocalPair
) -> None:
    holding = asyncio.create_task(
        transaction(
            client,
            "write",
            "LOCK TABLE pub16_texts IN SHARE ROW EXCLUSIVE MODE",
            "SELECT pg_sleep(1.5)",
        )
    )
    try:

        async def locked() -> bool:
            return await asyncio.to_thread(_share_row_exclusive_held, pair)

        await eventually(locked, "the write key's SHARE ROW EXCLUSIVE lock", 5)
        made = datetime.now(UTC)
        # a view over the locked table: its rule is printed back by a full reading
        as_owner(
            pair, "CREATE OR REPLACE VIEW public.pub16_over AS SELECT v FROM public.pub16_texts"
        )

        async def read_after() -> bool:
            r = await client.get("/pool/stats", headers=headers("admin"))
            read_at = r.json()["schema_code"]["read_at"]
            return read_at is not None and datetime.fromisoformat(read_at) > made

        await eventually(read_after, "a full reading while the lock is held", 1.0)
        assert not holding.done(), "the lock was no longer held when the reading came"
    finally:
        r = await holding
        as_owner(pair, "DROP VIEW IF EXISTS public.pub16_over")
    assert r.status_code == 200, r.text


def _share_row_exclusive_held(pair: LocalPair) -> bool:
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = 'public.pub16_texts'::regclass"
            " AND mode = 'ShareRowExclusiveLock' AND granted"
        ).fetchone()
    return row is not None and int(row[0]) > 0


async def test_a_call_into_another_sessions_temp_schema_is_refused(
    client: httpx.AsyncClient,
) -> None:
    r = await query(client, "write", "SELECT pg_temp_1.f16()")
    assert r.status_code == 400, r.text
    assert "pg_temp" in r.json()["detail"]
