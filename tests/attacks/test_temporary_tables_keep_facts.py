"""A write key making temporary tables in a loop no longer has the facts of the catalog
forgotten around each one (app/sql/schema_watch.py changed_by): every other key's statement
that ran meanwhile was judged once the catalog had been read again, its connection held till
then (pass 15), and a read key's one-row read went from 2 ms to 8-14 ms on 2 cores. The facts
count nothing in a temporary schema, and the table's connection is closed after it, so they
read the same after it.

What still counts is an event trigger: it runs code of the database's own on the CREATE
TABLE, and that code may change what the facts hold. Here the owner's audit trigger turns
the owner's harmless function into one that takes an advisory lock on what it is given; once
a key's CREATE TEMP TABLE has fired it, the catalog is read again at once (this service reads
it on its own only every hour), and a call per row of the function is refused by the lock
rule where it ran before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked, event_trigger_on, headers, query
from tests.conftest import as_owner
from tests.waiting import eventually

HARMLESS = (
    "CREATE OR REPLACE FUNCTION public.take_t(k int) RETURNS int LANGUAGE plpgsql"
    " AS $b$ BEGIN RETURN k; END $b$"
)
LOCKING = (
    "CREATE OR REPLACE FUNCTION public.take_t(k int) RETURNS int LANGUAGE plpgsql"
    " AS $b$ BEGIN PERFORM pg_advisory_xact_lock(k); RETURN k; END $b$"
)
PER_ROW = "SELECT count(public.take_t(g)) FROM generate_series(1, 10) g"


@pytest.fixture
async def audited(pair: LocalPair, world: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    as_owner(
        pair,
        HARMLESS,
        f"GRANT EXECUTE ON FUNCTION public.take_t(int) TO {SERVICE}",
        # (only the service's sessions fire it: the harness's own DDL runs as others)
        "CREATE OR REPLACE FUNCTION public.audit_t() RETURNS event_trigger LANGUAGE plpgsql"
        f" SECURITY DEFINER AS $$ BEGIN IF session_user = '{SERVICE}' THEN"
        f" EXECUTE $q$ {LOCKING} $q$; END IF; END $$",
    )
    try:
        with event_trigger_on(
            pair, "audit_t", "ddl_command_end", "'CREATE TABLE'", "public.audit_t"
        ):
            async with attacked(
                pair, world["role"], world["password"], schema_refresh_s=3600
            ) as client:

                async def first_read() -> bool:
                    return await _read_at(client) is not None

                await eventually(first_read, "the service's first reading of the catalog", 10)
                yield client
    finally:
        as_owner(pair, "DROP FUNCTION IF EXISTS public.audit_t()", HARMLESS)


async def _read_at(client: httpx.AsyncClient) -> datetime | None:
    r = await client.get("/pool/stats", headers=headers("admin"))
    assert r.status_code == 200, r.text
    read_at = r.json()["schema_code"]["read_at"]
    return None if read_at is None else datetime.fromisoformat(read_at)


async def test_an_event_trigger_on_a_temporary_table_is_read_at_once(
    audited: httpx.AsyncClient,
) -> None:
    client = audited

    async def read_after(moment: datetime) -> None:
        async def read() -> bool:
            read_at = await _read_at(client)
            return read_at is not None and read_at > moment

        await eventually(read, "the catalog to be read again", 10)

    sent = datetime.now(UTC)
    before = await query(client, "write", PER_ROW)
    assert before.status_code == 200, before.text
    assert before.json()["rows"] == [["10"]]  # (a bigint, as text)
    # (a call of the database's own code may change the schema: it is read again after)
    await read_after(sent)

    made = datetime.now(UTC)
    r = await query(client, "write", "CREATE TEMP TABLE audited_t (a int)")
    assert r.status_code == 200, r.text
    await read_after(made)
    after = await query(client, "write", PER_ROW)
    assert after.status_code == 400, after.text
    assert "take_t" in after.json()["detail"], after.text
    assert "locks" in after.json()["detail"], after.text
