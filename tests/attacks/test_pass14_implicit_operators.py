"""Fourteenth review pass (attacker): operators that PostgreSQL picks by name while it
analyses a statement, where the parse tree shows no such name.

app/sql/tree_walk.py records the operators a statement names (A_Expr.name) in
own_call_names, and app/sql/schema_code.py matches them against the database's own operators.
Some operators are never written as A_Expr names in the raw tree, though PostgreSQL looks
them up by name (make_op) all the same:

- `x BETWEEN a AND b` is an A_Expr named "BETWEEN": the analyser turns it into
  `x >= a AND x <= b` and resolves ">=" and "<=" by name;
- `CASE x WHEN y ...` is a CaseExpr: each WHEN is `x = y`, "=" resolved by name;
- `x IN (SELECT ...)` and `x op ANY / ALL (SELECT ...)` are SubLinks: their operator is in
  SubLink.operName, which the walk does not read;
- `JOIN ... USING (c)` and `NATURAL JOIN` compare the columns with "=", resolved by name for
  their types (here an enum of the schema's own with an "=" of its own).

So with an operator of the database's own reached this way, the statement reads as a query
that calls nothing: a pure read, Effect.NONE. What the operator's function left in the
session (here a session advisory lock, which a READ ONLY transaction's rollback does not
undo) stays on the pooled connection for the next key, and the statement may share a lane.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import leaves_no_lock, schema_seen
from tests.conftest import as_owner

# Own operators on (text, int), the types of pub.v and a literal: none exists in the catalog,
# so PostgreSQL resolves these to the schema's own.
_OPERATORS = ("<=", ">=", "=", "<<@>>")


@pytest.fixture
async def own_operators(
    pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient
) -> AsyncIterator[None]:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.claim14(a text, b int) RETURNS bool"
        " LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(1400 + b) $$",
        *(f"DROP OPERATOR IF EXISTS public.{op} (text, int)" for op in _OPERATORS),
        *(
            f"CREATE OPERATOR public.{op} (LEFTARG = text, RIGHTARG = int,"
            " FUNCTION = public.claim14)"
            for op in _OPERATORS
        ),
        "DO $$ BEGIN CREATE TYPE public.mood14 AS ENUM ('calm', 'busy');"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE OR REPLACE FUNCTION public.claim14m(a public.mood14, b public.mood14)"
        " RETURNS bool LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(1409) $$",
        "DROP OPERATOR IF EXISTS public.= (public.mood14, public.mood14)",
        "CREATE OPERATOR public.= (LEFTARG = public.mood14, RIGHTARG = public.mood14,"
        " FUNCTION = public.claim14m)",
        "CREATE TABLE IF NOT EXISTS public.moods14 (m public.mood14)",
        "INSERT INTO public.moods14 SELECT 'calm' WHERE NOT EXISTS (SELECT FROM public.moods14)",
    )
    await schema_seen(client)
    yield
    # ("=", "<=" and ">=" of the schema's own make every later statement that names them
    # look like a call of own code: gone after this module's tests)
    as_owner(
        pair,
        *(f"DROP OPERATOR IF EXISTS public.{op} (text, int)" for op in _OPERATORS),
        "DROP OPERATOR IF EXISTS public.= (public.mood14, public.mood14)",
        "DROP FUNCTION IF EXISTS public.claim14(text, int)",
    )


@pytest.mark.parametrize(
    ("key", "attack"),
    [
        ("read", "SELECT id FROM pub WHERE v BETWEEN 1 AND 2"),
        ("read", "SELECT id FROM pub WHERE v BETWEEN SYMMETRIC 4 AND 3"),
        ("read", "SELECT CASE v WHEN 5 THEN 'five' ELSE 'other' END FROM pub"),
        ("read", "SELECT id FROM pub WHERE v IN (SELECT 6)"),
        ("read", "SELECT id FROM pub WHERE v <<@>> ANY (SELECT 7)"),
        ("write", "SELECT id FROM pub WHERE v <<@>> ALL (SELECT 8)"),
        ("read", "SELECT 1 FROM moods14 a JOIN moods14 b USING (m)"),
        ("read", "SELECT 1 FROM moods14 a NATURAL JOIN moods14 b"),
    ],
    ids=[
        "between-own-le-ge",
        "between-symmetric",
        "case-when-own-eq",
        "in-subquery-own-eq",
        "any-subquery-own-operator",
        "all-subquery-write-key",
        "join-using-own-eq",
        "natural-join-own-eq",
    ],
)
async def test_no_session_lock_outlives_an_operator_picked_by_name(
    client: httpx.AsyncClient, own_operators: None, pair: LocalPair, key: str, attack: str
) -> None:
    await leaves_no_lock(client, pair, key, attack)
