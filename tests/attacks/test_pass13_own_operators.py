"""Thirteenth review pass (attacker): an operator or a cast of the database's own runs its
function with no call in the parse tree.

app/sql/tree.py records calls (FuncCall nodes) and attribute names; an operator (A_Expr) and
a cast (TypeCast) are neither, so `SELECT 1 @@@ 2` or `SELECT 1::ticket` reads as a query
that calls nothing (and an assignment cast, `INSERT INTO tickets VALUES (1)` into a column
of type ticket, is not even in the text). Operators and casts are refused in requests
("define it in a migration"), so a schema may well have them; their functions are the
database's own, but app/sql/schema_code.py only matches own *function names*
(own_call_names), never the operators or casts that reach them. Such a query is judged a
pure read with Effect.NONE: it runs for a read key too, and what the function left in its
session (here a session advisory lock, which a READ ONLY transaction's rollback does not
undo) is the next key's.
"""

from __future__ import annotations

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, query, schema_seen
from tests.conftest import as_owner


@pytest.fixture
async def own_operators(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.claim13c(a int, b int) RETURNS bool"
        " LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(a, b) $$",
        "DO $$ BEGIN CREATE OPERATOR public.@@@ (LEFTARG = int, RIGHTARG = int,"
        " FUNCTION = public.claim13c); EXCEPTION WHEN duplicate_function THEN NULL; END $$",
        "DO $$ BEGIN CREATE TYPE public.ticket13 AS (n int);"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE OR REPLACE FUNCTION public.to_ticket13(n int) RETURNS public.ticket13"
        " LANGUAGE sql AS $$ SELECT ROW(n)::public.ticket13 WHERE pg_try_advisory_lock(n) $$",
        "DROP CAST IF EXISTS (int AS public.ticket13)",
        "CREATE CAST (int AS public.ticket13) WITH FUNCTION public.to_ticket13(int) AS ASSIGNMENT",
        "CREATE TABLE IF NOT EXISTS public.tickets13 (t public.ticket13)",
        "INSERT INTO public.tickets13 SELECT ROW(7)::public.ticket13"
        " WHERE NOT EXISTS (SELECT FROM public.tickets13)",
        # an implicit cast from the schema's type to a built-in one (a catalog call's argument)
        "CREATE OR REPLACE FUNCTION public.ticket13_text(t public.ticket13) RETURNS text"
        " LANGUAGE sql AS $$ SELECT (t).n::text WHERE pg_try_advisory_lock(1332) $$",
        "DROP CAST IF EXISTS (public.ticket13 AS text)",
        "CREATE CAST (public.ticket13 AS text) WITH FUNCTION"
        " public.ticket13_text(public.ticket13) AS IMPLICIT",
    )
    await schema_seen(client)


@pytest.mark.parametrize(
    ("key", "attack"),
    [
        ("read", "SELECT 13 @@@ 1"),
        ("read", "SELECT 13 OPERATOR(public.@@@) 2"),
        ("write", "SELECT id FROM pub WHERE id @@@ 3"),
        ("read", "SELECT 1313::ticket13"),
        ("read", "SELECT CAST(1314 AS public.ticket13)"),
        ("write", "INSERT INTO tickets13 VALUES (1315)"),
        ("read", "SELECT length(t) FROM tickets13"),
    ],
    ids=[
        "operator",
        "operator-qualified",
        "operator-write-key",
        "cast",
        "cast-qualified",
        "assignment-cast",
        "implicit-cast-in-catalog-call",
    ],
)
async def test_no_session_lock_outlives_an_own_operator(
    client: httpx.AsyncClient, own_operators: None, pair: LocalPair, key: str, attack: str
) -> None:
    r = await query(client, key, attack)
    assert r.status_code < 500, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, f"a session lock outlived {attack!r}: {r.text}"
