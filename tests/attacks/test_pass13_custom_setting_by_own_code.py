"""Thirteenth review pass (attacker): a custom setting defined by the database's own code
stays defined for the next key (and so does a random seed).

PostgreSQL keeps a custom setting's placeholder (app.tenant) defined in the session for good:
DISCARD ALL (and a rolled-back transaction) reset its value to '', not to undefined, so the
next key's current_setting('app.tenant', true) says '' instead of NULL (a policy's
`current_setting('app.tenant', true)::int` then fails, a coalesce() picks '' over its
default). app/sql/session.py closes the connection after a statement that sets one itself
(custom_settings, Effect.CLOSE), but code of the database's own that does it (a
`set_tenant()` function, a view or a trigger calling one) gets Effect.RESET: DISCARD ALL,
which leaves the placeholder behind. A read key's READ ONLY transaction, rolled back, leaves
it too.
"""

from __future__ import annotations

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import query, schema_seen
from tests.conftest import as_owner

TENANT = "SELECT current_setting('app.tenant13', true)"


@pytest.fixture
async def tenant_code(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.set_tenant13(t text) RETURNS text LANGUAGE sql"
        " AS $$ SELECT set_config('app.tenant13', t, false) $$",
        "CREATE OR REPLACE VIEW public.tenant_view13 AS SELECT set_tenant13('view') AS t",
        "CREATE OR REPLACE FUNCTION public.tenant13_row() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM set_tenant13('trigger'); RETURN NEW; END $$",
        "CREATE TABLE IF NOT EXISTS public.tenant_rows13 (id int)",
        "DROP TRIGGER IF EXISTS tenant ON public.tenant_rows13",
        "CREATE TRIGGER tenant BEFORE INSERT ON public.tenant_rows13"
        " FOR EACH ROW EXECUTE FUNCTION tenant13_row()",
    )
    await schema_seen(client)


@pytest.mark.parametrize(
    ("key", "attack"),
    [
        ("write", "SELECT set_tenant13('write')"),
        ("read", "SELECT set_tenant13('read')"),
        ("read", "SELECT t FROM tenant_view13"),
        ("write", "INSERT INTO tenant_rows13 VALUES (1)"),
    ],
    ids=["own-function", "own-function-read-key", "view-read-key", "trigger"],
)
async def test_no_custom_setting_reaches_the_next_key(
    client: httpx.AsyncClient, tenant_code: None, key: str, attack: str
) -> None:
    fresh = await query(client, "admin", TENANT)
    assert fresh.json()["rows"] == [[None]], fresh.text
    r = await query(client, key, attack)
    assert r.status_code == 200, r.text
    seen = await query(client, "admin", TENANT)
    assert seen.status_code == 200, seen.text
    assert seen.json()["rows"] == [[None]], f"after {attack!r}: {seen.text}"


@pytest.mark.parametrize("key", ["write", "read"])
async def test_a_seed_set_by_own_code_reaches_no_other_key(
    client: httpx.AsyncClient, pair: LocalPair, world: dict[str, str], key: str
) -> None:
    """The same for the random seed (DISCARD ALL keeps it; a direct setseed() closes the
    connection): an own function that seeds leaves the next key's random() predictable."""
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.seed13() RETURNS void LANGUAGE sql"
        " AS $$ SELECT setseed(0.13) $$",
    )
    with pair.primary.connect() as conn:
        conn.execute("SELECT setseed(0.13)")
        row = conn.execute("SELECT random()").fetchone()
    assert row is not None
    predicted = row[0]
    assert (await query(client, key, "SELECT seed13()")).status_code == 200
    r = await query(client, "admin", "SELECT random()")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] != [[predicted]], "another key's random() was the seeded one"
