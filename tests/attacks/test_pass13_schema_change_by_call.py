"""Thirteenth review pass (attacker): a schema change made through mirrorpool that the watch
is not told of, because a function of the database's own makes it.

app/sql/engine.py marks the catalog's facts unknown around a statement only when
session.changes_schema() says the statement itself is DDL. A call of a function of the
database's own (a partition maker, a setup helper: `SELECT add_partition(...)`) is judged
to leave its session dirty, but not to change the schema, so the facts stay as they were
until the next periodic reading (MIRRORPOOL_SCHEMA_REFRESH_S). Until then a write that fires
the trigger the call just created is judged clean, and the trigger's session lock is the
next key's. (The reading period is raised here so that the window is the whole test.)
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, query
from tests.conftest import as_owner


@pytest.fixture
def overrides(pair: LocalPair, world: dict[str, str]) -> dict[str, Any]:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.claim13b(id bigint) RETURNS bool"
        " LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(id) $$",
        "CREATE OR REPLACE FUNCTION public.claim13b_row() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM public.claim13b(1311); RETURN NEW; END $$",
        "CREATE TABLE IF NOT EXISTS public.queue13 (id int)",
        "DROP TRIGGER IF EXISTS claim ON public.queue13",
        "CREATE OR REPLACE FUNCTION public.add_claim13() RETURNS void LANGUAGE plpgsql"
        " SECURITY DEFINER SET search_path = public AS $$ BEGIN"
        " EXECUTE 'DROP TRIGGER IF EXISTS claim ON public.queue13';"
        " EXECUTE 'CREATE TRIGGER claim BEFORE INSERT ON public.queue13"
        " FOR EACH ROW EXECUTE FUNCTION public.claim13b_row()'; END $$",
    )
    return {"schema_refresh_s": 60}


async def test_schema_change_by_a_call_is_seen(client: httpx.AsyncClient, pair: LocalPair) -> None:
    made = await query(client, "write", "SELECT add_claim13()")
    assert made.status_code == 200, made.text
    r = await query(client, "write", "INSERT INTO queue13 VALUES (1)")
    assert r.status_code == 200, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, "the trigger a call made left its session lock behind"
