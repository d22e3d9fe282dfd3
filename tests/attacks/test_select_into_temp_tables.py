"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Fourth review pass. Any DDL resets the session (app/sql/session.py: a statement kind not in
_CLEAN_KINDS), and temporary objects are read from the statement itself (TEMP, or a name in
pg_temp: app/sql/tree.py). `SELECT ... INTO t` creates a table all the same, yet its tree is a
SelectStmt (a clean kind) with an IntoClause, so with pg_temp first on the transaction's
search_path (`SET LOCAL search_path = pg_temp` or `set_config('search_path', 'pg_temp',
true)`, both judged local and clean) an unqualified `SELECT ... INTO pub` makes a temporary
table the tree does not see as one: the transaction is Effect.NONE and its connection goes
back without DISCARD ALL. The same holds inside `EXPLAIN (ANALYZE)`.

PostgreSQL searches pg_temp first for relations, so on that shared connection the attacker's
table answers for the schema's `pub` in every later key's statement: other keys read the
attacker's rows, and their INSERTs land in the attacker's table, where the attacker reads
them back."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.devdb import OWNER, LocalPair
from tests.attacks.conftest import query, transaction


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}  # every request on the primary's one shared connection


PG_TEMP_FIRST = [
    "SET LOCAL search_path = pg_temp",
    "SELECT set_config('search_path', 'pg_temp', true)",
]


@pytest.mark.parametrize("first", PG_TEMP_FIRST, ids=["set-local", "set-config"])
async def test_a_table_made_by_select_into_does_not_answer_for_other_keys(
    client: httpx.AsyncClient, first: str
) -> None:
    attack = await transaction(
        client,
        "write",
        first,
        "SELECT 1 AS id, 'spoofed-by-writer'::pg_catalog.text AS v INTO pub",
    )
    assert attack.status_code in (200, 400), attack.text  # (a refusal is a fix)
    for key in ("admin", "read"):
        victim = await query(client, key, "SELECT v FROM pub WHERE id = 1")
        assert victim.status_code == 200, (key, victim.text)
        assert victim.json()["rows"] == [["public"]], (key, victim.text)


async def test_another_keys_insert_does_not_land_in_a_table_made_by_explain_select_into(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    attack = await transaction(
        client,
        "write",
        PG_TEMP_FIRST[0],
        "EXPLAIN (ANALYZE) SELECT id, v INTO pub FROM public.pub WHERE false",
    )
    assert attack.status_code in (200, 400), attack.text
    victim = await query(client, "admin", "INSERT INTO pub VALUES (7, 'victim-secret')")
    assert victim.status_code in (200, 409), victim.text
    try:
        # The row is in the schema's table, where the victim meant it (not in a temporary
        # table of the attacker's session, which only that session could read).
        with pair.primary.connect(user=OWNER) as conn:
            row = conn.execute("SELECT v FROM public.pub WHERE id = 7").fetchone()
        assert row == ("victim-secret",)
    finally:
        await query(client, "admin", "DELETE FROM public.pub WHERE id = 7")
