"""Nineteenth review pass (attacker): a write key's table lock during a catalog reading makes
a view count as running code until the next schema change.

app/sql/schema_queries.py CODE_TEXTS_SQL does not print back (pg_get_ruledef) a view whose
rule names a relation another session holds or awaits in ACCESS EXCLUSIVE mode: it counts
it as code instead (pass 14). That is right for the moment of the lock, but the facts it
gives are kept as long as the fingerprint stays the same: the lock's end changes no catalog
row, so the view keeps counting as code until the next migration. A write key may lock a
table it may update (`LOCK TABLE base IN ACCESS EXCLUSIVE MODE` in a /v1/transaction, a
second is enough) whenever a migration is likely (or keep doing so): from then on every
read of the views over that table, by any key, closes its pooled connection (the pool logs
in again, the key's share waits for the refill), for hours.

    POST /v1/transaction {"statements": [
        {"sql": "LOCK TABLE base19l IN ACCESS EXCLUSIVE MODE"}, {"sql": "SELECT pg_sleep(0.6)"}]}

while the owner runs any DDL (here an unrelated CREATE TABLE).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import query, schema_seen, transaction
from tests.conftest import as_owner
from tests.waiting import eventually


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"pool_max_size": 2}  # (the catalog reading needs one while the lock is held)


@pytest.fixture
async def views(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE TABLE IF NOT EXISTS public.base19l (id int)",
        "INSERT INTO public.base19l SELECT 1 WHERE NOT EXISTS (SELECT FROM public.base19l)",
        "CREATE OR REPLACE VIEW public.view19l AS SELECT id FROM public.base19l",
        "DROP TABLE IF EXISTS public.unrelated19l",
        "GRANT SELECT ON public.view19l TO PUBLIC",
        f"GRANT SELECT, UPDATE ON public.base19l TO {SERVICE}",
    )
    await schema_seen(client)


def alive(pair: LocalPair, pid: int) -> bool:
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        found = row.fetchone()
    assert found is not None
    return bool(found[0])


async def closes(client: httpx.AsyncClient, pair: LocalPair, sql: str) -> bool:
    """Whether the read key's `sql` (which gives its backend's pid) closes its connection."""
    r = await query(client, "read", sql)
    assert r.status_code == 200, r.text
    pid = int(r.json()["rows"][0][0])
    for _ in range(2):  # the pool settles (a closed connection is replaced)
        assert (await query(client, "admin", "SELECT 1")).status_code == 200
    return not alive(pair, pid)


def locked(pair: LocalPair) -> bool:
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock'"
            " AND relation = 'public.base19l'::regclass AND granted"
        ).fetchone()
    assert row is not None
    return bool(row[0])


async def test_a_lock_during_a_reading_leaves_no_code_behind(
    client: httpx.AsyncClient, views: None, pair: LocalPair
) -> None:
    view_read = "SELECT pg_backend_pid() FROM view19l LIMIT 1"
    # (the check sees a close: a local custom setting closes its connection)
    assert await closes(client, pair, "SELECT pg_backend_pid(), set_config('app.x', '1', true)")
    assert not await closes(client, pair, view_read)  # the view runs nothing
    holder = asyncio.create_task(
        transaction(
            client,
            "write",
            "LOCK TABLE base19l IN ACCESS EXCLUSIVE MODE",
            "SELECT pg_sleep(0.6)",
        )
    )
    await eventually(lambda: locked(pair), "the write key's lock", 5)
    as_owner(pair, "CREATE TABLE public.unrelated19l (a int)")  # a migration, meanwhile
    await schema_seen(client)
    answer = await holder
    assert answer.status_code == 200, answer.text
    await schema_seen(client)  # a reading after the lock ended
    assert not await closes(client, pair, view_read), "the view counts as code after the lock"
