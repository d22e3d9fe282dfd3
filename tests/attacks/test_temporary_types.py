"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Types created in pg_temp by CREATE DOMAIN and CREATE TYPE ... AS ENUM / AS RANGE are not
read as temporary (app/sql/tree.py marks `temp` only for a RangeVar in pg_temp and for
CREATE FUNCTION / DefineStmt names), so the statement is judged clean and its connection
goes back without DISCARD ALL. PostgreSQL searches the session's temporary schema first for
type names, so the attacker's type shadows a built-in one (`text`) in every later key's
statements on that connection, prepared ones included."""

from __future__ import annotations

import httpx
import pytest

from tests.attacks.conftest import query

SHADOWS = [
    "CREATE DOMAIN pg_temp.text AS pg_catalog.varchar(3)",
    'CREATE DOMAIN "pg_temp"."text" AS pg_catalog.varchar(3)',
    "CREATE TYPE pg_temp.text AS ENUM ('pub')",
    "CREATE TYPE pg_temp.text AS RANGE (subtype = pg_catalog.int4)",
]


@pytest.mark.parametrize("attack", SHADOWS)
async def test_a_temporary_type_shadows_text_for_other_keys(
    client: httpx.AsyncClient, attack: str
) -> None:
    victim = "SELECT v::text AS v FROM pub WHERE id = $1"
    for _ in range(3):  # prepared on the shared connection
        assert (await query(client, "admin", victim, params=[1])).json()["rows"] == [["public"]]
    created = await query(client, "write", attack)
    assert created.status_code in (200, 400), created.text  # made (then reset), or refused
    for key in ("admin", "read"):
        answer = await query(client, key, victim, params=[1])
        assert answer.status_code == 200, (key, answer.text)
        assert answer.json()["rows"] == [["public"]], (key, answer.text)
        assert answer.json()["columns"][0]["type"] == "text", (key, answer.text)
