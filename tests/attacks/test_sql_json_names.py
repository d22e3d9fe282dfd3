"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Third review pass. The parse tree comes from PostgreSQL 18's parser (pglast), the server is
PostgreSQL 15. Since PostgreSQL 16 and 17, json(...), json_scalar, json_serialize, json_array,
json_arrayagg, json_exists, json_value, json_query and merge_action() are SQL/JSON syntax: the
tree holds a JsonValueExpr / JsonFuncExpr node, no FuncCall. PostgreSQL 15 reads each as an
ordinary call of a function of that name, found on the search_path: the database's own, if
its schema has one (json_value(doc, path) helpers were common before PostgreSQL 17). The call
is not in the tree's calls, so the statement is judged clean (no reset after it, and it may
share lanes), although what a function of the database's own leaves in the session is
exactly what the reset is for: here a value the victim's call kept in a session setting
reaches the next key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import query
from tests.conftest import as_owner

# A helper of the application's schema, as a migration made it: it keeps the last document
# it read in a session setting (for its own auditing, say).
HELPER = (
    "CREATE OR REPLACE FUNCTION public.json_value(doc jsonb, path text) RETURNS text"
    " LANGUAGE plpgsql AS $f$ BEGIN"
    " PERFORM set_config('app.last_doc', doc::text, false);"
    " RETURN doc #>> string_to_array(path, '.'); END $f$"
)


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}  # every request on the primary's one shared connection


@pytest.fixture
def helper(pair: LocalPair) -> Iterator[None]:
    as_owner(pair, HELPER)
    yield
    as_owner(pair, "DROP FUNCTION IF EXISTS public.json_value(jsonb, text)")


async def test_a_call_hidden_by_sql_json_syntax_is_still_reset_after(
    client: httpx.AsyncClient, helper: None
) -> None:
    victim = await query(
        client,
        "admin",
        "SELECT json_value($1::jsonb, $2) AS v",
        params=[{"card": "4111-secret-of-admin"}, "card"],
    )
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["4111-secret-of-admin"]], victim.text
    spy = await query(client, "read", "SELECT current_setting('app.last_doc', true) AS doc")
    assert spy.status_code == 200, spy.text
    assert "4111-secret-of-admin" not in spy.text, f"the read key read it: {spy.text}"
