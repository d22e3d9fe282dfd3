"""Eighteenth review pass (attacker): an event trigger runs the database's own code on a
write key's DDL, and nothing reads pg_event_trigger.

An event trigger (made by a superuser, as an audit tool or an extension does) fires on
ddl_command_start before PostgreSQL checks the statement's privileges, so even a DDL the
service's login may not run (CREATE TABLE in a schema it cannot create in) or one that finds
nothing to do (DROP TABLE IF EXISTS) runs it. app/sql/schema_queries.py reads rules,
policies, defaults, checks, index expressions, triggers and partition keys, and not
pg_event_trigger, so such a statement is not judged to run code of the database's own: it
gets the DDL's reset (DISCARD ALL), not a close. A session advisory lock the function takes
goes with the reset (test_pass18_tried.py), but a custom setting it defines keeps its
placeholder (as in pass 13): the next key's current_setting('app.tenant18', true) is ''
where it was NULL. (CREATE TEMP TABLE closes its connection anyway: it holds.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import event_trigger_on, query, schema_seen
from tests.conftest import as_owner


@pytest.fixture
async def event_trigger(
    pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient
) -> AsyncIterator[None]:
    as_owner(
        pair,
        # (only the service's sessions are touched: the harness's own DDL runs as others)
        "CREATE OR REPLACE FUNCTION public.audit18() RETURNS event_trigger LANGUAGE plpgsql AS"
        f" $$ BEGIN IF session_user = '{SERVICE}' THEN"
        " PERFORM set_config('app.tenant18', 'ddl', false); END IF; END $$",
    )
    tags = "'CREATE TABLE', 'DROP TABLE'"
    with event_trigger_on(pair, "audit18", "ddl_command_start", tags, "public.audit18"):
        await schema_seen(client)
        yield


@pytest.mark.parametrize(
    "attack",
    [
        "DROP TABLE IF EXISTS public.nothing18",
        "CREATE TABLE public.made18 (a int)",
    ],
    ids=["drop-if-exists-nothing", "refused-create-table"],
)
async def test_no_setting_outlives_an_event_trigger(
    client: httpx.AsyncClient, event_trigger: None, attack: str
) -> None:
    tenant = "SELECT current_setting('app.tenant18', true)"
    fresh = await query(client, "admin", tenant)
    assert fresh.json()["rows"] == [[None]], fresh.text
    r = await query(client, "write", attack)
    assert r.status_code < 500, r.text
    seen = await query(client, "admin", tenant)
    assert seen.status_code == 200, seen.text
    assert seen.json()["rows"] == [[None]], f"after {attack!r}: {seen.text}"
