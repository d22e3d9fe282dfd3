"""Thirteenth review pass (attacker): a key makes the catalog reading wait on its lock, and
the primary is taken for failed: every key's requests in flight there fail.

app/sql/schema_code.py reads the catalog on the health monitor's connection
(app/sql/engine.py _ask_catalog -> monitor.ask), and its queries call pg_get_expr() on each
relation with a default or a check, which opens the relation (AccessShareLock). A write key
holds LOCK TABLE ... IN ACCESS EXCLUSIVE MODE on such a table in a /v1/transaction (it may:
it has UPDATE on it) and has the catalog read again (any statement changes_schema() flags
does, even a read key's DROP TABLE IF EXISTS that READ ONLY refuses). The reading waits
for the lock past the probe timeout, the monitor's connection is abandoned, the primary
counts as failed, and app/sql/engine.py _sever() fails every request in flight on it: the
admin key's INSERT here answers 503 (a read would be retried on the mirror). Once the lock
is gone the primary is back, and the attack can start again.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import query, transaction
from tests.conftest import as_owner
from tests.waiting import eventually


@pytest.fixture
def overrides(pair: LocalPair, world: dict[str, str]) -> dict[str, Any]:
    as_owner(
        pair,
        "CREATE TABLE IF NOT EXISTS public.locked13 (id int DEFAULT 1)",
        "CREATE TABLE IF NOT EXISTS public.notes13 (v text)",
    )
    return {"pool_max_size": 4}


def locked(pair: LocalPair) -> bool:
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = 'public.locked13'::regclass"
            " AND mode = 'AccessExclusiveLock' AND granted"
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("trigger_key", ["read", "write"])
async def test_a_key_lock_does_not_fail_other_keys_requests(
    client: httpx.AsyncClient, pair: LocalPair, trigger_key: str
) -> None:
    holder = asyncio.ensure_future(
        transaction(
            client,
            "write",
            "LOCK TABLE locked13 IN ACCESS EXCLUSIVE MODE",
            "SELECT pg_sleep(4)",
        )
    )
    await eventually(lambda: locked(pair), "the write key to hold its lock")
    tag = f"victim-{uuid.uuid4().hex[:8]}"
    victim = asyncio.ensure_future(
        query(client, "admin", "INSERT INTO notes13 SELECT $1 FROM pg_sleep(2.5)", params=[tag])
    )
    r = await query(client, trigger_key, "DROP TABLE IF EXISTS nothing_here_13")
    assert r.status_code < 500, r.text
    answer = await victim
    await holder
    assert answer.status_code == 200, answer.text
