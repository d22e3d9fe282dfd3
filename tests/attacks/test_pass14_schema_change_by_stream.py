"""Fourteenth review pass (attacker): pass 13's schema change made by a call of the
database's own code, sent to /v1/query/stream instead of /v1/query.

app/sql/engine.py marks the catalog's facts UNKNOWN around a statement that
session.changes_schema() flags (pass 13 made a call of own code one) in run() and
transaction(), but stream() hands the statement to app/sql/streaming.py, which never marks
anything. A write key streams `SELECT add_claim14()` (a setup helper that creates a trigger,
as a partition maker would): the facts stay the old ones, KNOWN, until the next periodic
reading, and the first write that fires the new trigger is judged clean: its session
advisory lock stays for the next key. (The reading period is raised here so that the window
is the whole test, as in pass 13's test; by default it is MIRRORPOOL_SCHEMA_REFRESH_S.)
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, headers, query
from tests.conftest import as_owner


@pytest.fixture
def overrides(pair: LocalPair, world: dict[str, str]) -> dict[str, Any]:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.claim14s_row() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM pg_try_advisory_lock(1461); RETURN NEW; END $$",
        "CREATE TABLE IF NOT EXISTS public.queue14 (id int)",
        "DROP TRIGGER IF EXISTS claim ON public.queue14",
        "CREATE OR REPLACE FUNCTION public.add_claim14() RETURNS int LANGUAGE plpgsql"
        " SECURITY DEFINER SET search_path = public AS $$ BEGIN"
        " EXECUTE 'DROP TRIGGER IF EXISTS claim ON public.queue14';"
        " EXECUTE 'CREATE TRIGGER claim BEFORE INSERT ON public.queue14"
        " FOR EACH ROW EXECUTE FUNCTION public.claim14s_row()'; RETURN 1; END $$",
    )
    return {"schema_refresh_s": 60}


async def test_schema_change_by_a_streamed_call_is_seen(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    made = await client.post(
        "/v1/query/stream", json={"sql": "SELECT add_claim14()"}, headers=headers("write")
    )
    assert made.status_code == 200, made.text
    r = await query(client, "write", "INSERT INTO queue14 VALUES (1)")
    assert r.status_code == 200, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, "the trigger a streamed call made left its session lock"
