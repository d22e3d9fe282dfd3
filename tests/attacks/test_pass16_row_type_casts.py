"""Sixteenth review pass (attacker): an implicit cast from a table's row type runs the
database's own function with nothing in the statement naming it.

app/sql/schema_queries.py TYPE_CODE_SQL marks a type whose casts are the database's own
(here `pub16`, the row type of table pub16), and app/sql/schema_code.py counts a relation
as running that code when a *column* is of such a type, and the type's name among the
names a statement may reach it by (a TypeName: `::pub16`). A whole-row reference is
neither: `SELECT length(p) FROM pub16 p` casts the row to text implicitly (the schema's
`CREATE CAST (pub16 AS text) ... AS IMPLICIT`), and no column of pub16 is of type pub16.
The statement is judged to run nothing, so what the cast's function left in the session (a
session advisory lock, which the READ ONLY transaction's rollback does not undo) is the
next key's.
"""

from __future__ import annotations

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, query, schema_seen
from tests.conftest import as_owner


@pytest.fixture
async def row_cast(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE TABLE IF NOT EXISTS public.pub16 (id int PRIMARY KEY, v text)",
        "INSERT INTO public.pub16 VALUES (1, 'one') ON CONFLICT DO NOTHING",
        "CREATE OR REPLACE FUNCTION public.pub16_text(r public.pub16) RETURNS text"
        " LANGUAGE sql AS $$ SELECT (r).v WHERE pg_try_advisory_lock(1616) $$",
        "DROP CAST IF EXISTS (public.pub16 AS text)",
        "CREATE CAST (public.pub16 AS text) WITH FUNCTION public.pub16_text(public.pub16)"
        " AS IMPLICIT",
        "CREATE OR REPLACE VIEW public.pub16_lengths AS SELECT length(p) AS n FROM public.pub16 p",
        "CREATE TABLE IF NOT EXISTS public.pub16_texts (v text)",
        "GRANT SELECT ON public.pub16, public.pub16_lengths TO PUBLIC",
        "GRANT INSERT ON public.pub16_texts TO PUBLIC",
    )
    await schema_seen(client)


@pytest.mark.parametrize(
    ("key", "attack"),
    [
        ("read", "SELECT length(p) FROM pub16 p"),
        ("read", "SELECT lower(p) FROM pub16 AS p WHERE id = 1"),
        ("write", "SELECT upper(pub16) FROM pub16"),
        ("read", "SELECT p::text FROM pub16 p"),
        ("write", "INSERT INTO pub16_texts (v) SELECT p FROM pub16 p"),
    ],
    ids=[
        "whole-row-length",
        "whole-row-lower",
        "table-named-row",
        "explicit-cast-to-text",
        "assignment-into-text-column",
    ],
)
async def test_no_session_lock_outlives_a_row_type_cast(
    client: httpx.AsyncClient, row_cast: None, pair: LocalPair, key: str, attack: str
) -> None:
    r = await query(client, key, attack)
    assert r.status_code < 500, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, f"a session lock outlived {attack!r}: {r.text}"
