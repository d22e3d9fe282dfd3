"""Thirteenth review pass (attacker): a schema change the catalog watch never sees.

app/sql/schema_code.py reads the catalog again only when its fingerprint changes, and the
fingerprint of each catalog is its row count and its largest xmin. A change that updates a
row (same count) in a transaction whose xid is lower than that of another change committed
before it (a migration that began first and commits last) leaves both figures as they were:
the watch keeps its reading for good, not only until the next MIRRORPOOL_SCHEMA_REFRESH_S.

Here a migration made outside mirrorpool, in a transaction that took its xid first, enables
a trigger that takes a session advisory lock, while another change creates a trigger
elsewhere and commits first. After the watch has read the catalog again, writes to the
table are still judged to run no code of the database's own, and the lock is the next
key's.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.devdb import OWNER, LocalPair
from tests.attacks.conftest import advisory_locks, query, schema_seen
from tests.conftest import as_owner


@pytest.fixture
def overrides(pair: LocalPair, world: dict[str, str]) -> dict[str, Any]:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.claim13d_row() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM pg_try_advisory_lock(1321); RETURN NEW; END $$",
        "CREATE OR REPLACE FUNCTION public.noop13d_row() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RETURN NEW; END $$",
        "CREATE TABLE IF NOT EXISTS public.queue13d (id int)",
        "CREATE TABLE IF NOT EXISTS public.other13d (id int)",
        "DROP TRIGGER IF EXISTS claim ON public.queue13d",
        "CREATE TRIGGER claim BEFORE INSERT ON public.queue13d"
        " FOR EACH ROW EXECUTE FUNCTION claim13d_row()",
        "ALTER TABLE public.queue13d DISABLE TRIGGER claim",
        "DROP TRIGGER IF EXISTS noop ON public.other13d",
    )
    return {}


async def test_change_by_an_earlier_transaction_is_seen(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    first = pair.primary.connect(user=OWNER)
    try:
        first.autocommit = False
        first.execute("SELECT pg_current_xact_id()")  # this migration's xid comes first
        as_owner(
            pair,
            "CREATE TRIGGER noop BEFORE INSERT ON public.other13d"
            " FOR EACH ROW EXECUTE FUNCTION noop13d_row()",
        )
        await schema_seen(client)
        first.execute("ALTER TABLE public.queue13d ENABLE TRIGGER claim")
        first.commit()
    finally:
        first.close()
    await schema_seen(client)  # read again after the migration committed
    r = await query(client, "write", "INSERT INTO queue13d VALUES (1)")
    assert r.status_code == 200, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, "a trigger enabled by a migration was never seen"
