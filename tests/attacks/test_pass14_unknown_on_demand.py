"""Fourteenth review pass (attacker): a write key makes the catalog's facts UNKNOWN exactly
when its own statement is judged, so code of the database's own that runs out of sight gets
a reset where it should get a closed connection.

app/sql/session.py effect_with(): known code of the database's own that a statement runs
unseen (a view's, a trigger's) closes the connection after it (Effect.CLOSE), since it may
leave what DISCARD ALL does not undo (a custom setting's placeholder, the random seed).
While the facts are UNKNOWN it gets Effect.RESET only. app/sql/engine.py marks them UNKNOWN
before any statement session.changes_schema() flags, and /v1/transaction marks them before
the transaction starts and judges every statement's effect right after
(transactions.pipelined), before the watch can have read the catalog again. So a write key
puts one harmless statement that "may change the schema" into its transaction, and each of
its other statements is judged against UNKNOWN:

    {"statements": [{"sql": "DROP TABLE IF EXISTS nothing_here_14"},
                    {"sql": "SELECT t FROM tenant_view14"}]}

`DROP TABLE IF EXISTS` of nothing needs no privilege and changes nothing. The view calls
set_tenant14(), which defines app.tenant14 for the session; the connection is reset, not
closed, and every later key's current_setting('app.tenant14', true) says '' instead of NULL.
"""

from __future__ import annotations

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import query, schema_seen, transaction
from tests.conftest import as_owner

TENANT = "SELECT current_setting('app.tenant14', true)"
NOTHING = "DROP TABLE IF EXISTS nothing_here_14"


@pytest.fixture
async def tenant_code(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.set_tenant14(t text) RETURNS text LANGUAGE sql"
        " AS $$ SELECT set_config('app.tenant14', t, false) $$",
        "CREATE OR REPLACE VIEW public.tenant_view14 AS SELECT set_tenant14('view') AS t",
        "CREATE OR REPLACE FUNCTION public.tenant14_row() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM set_tenant14('trigger'); RETURN NEW; END $$",
        "CREATE TABLE IF NOT EXISTS public.tenant_rows14 (id int)",
        "DROP TRIGGER IF EXISTS tenant ON public.tenant_rows14",
        "CREATE TRIGGER tenant BEFORE INSERT ON public.tenant_rows14"
        " FOR EACH ROW EXECUTE FUNCTION tenant14_row()",
    )
    await schema_seen(client)


@pytest.mark.parametrize(
    "statements",
    [
        (NOTHING, "SELECT t FROM tenant_view14"),
        ("SELECT t FROM tenant_view14", NOTHING),
        (NOTHING, "INSERT INTO tenant_rows14 VALUES (1)"),
        ("DROP VIEW IF EXISTS no_view_14", "SELECT t FROM tenant_view14"),
    ],
    ids=[
        "drop-nothing-then-view",
        "view-then-drop-nothing",
        "drop-nothing-then-trigger",
        "drop-view-nothing-then-view",
    ],
)
async def test_a_write_key_cannot_make_own_code_get_a_reset_only(
    client: httpx.AsyncClient, tenant_code: None, statements: tuple[str, ...]
) -> None:
    fresh = await query(client, "admin", TENANT)
    assert fresh.json()["rows"] == [[None]], fresh.text
    r = await transaction(client, "write", *statements)
    assert r.status_code == 200, r.text
    seen = await query(client, "admin", TENANT)
    assert seen.status_code == 200, seen.text
    assert seen.json()["rows"] == [[None]], (
        f"after a transaction of {statements!r}, another key's session still has the "
        f"placeholder: {seen.text}"
    )
