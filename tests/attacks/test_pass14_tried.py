"""Fourteenth review pass (attacker): what was tried and held, kept so it keeps holding.

- Operators of the schema's own that the raw tree names (A_Expr): `IN (list)`, NULLIF,
  IS DISTINCT FROM, `= ANY (array)`, OPERATOR(public.<=), a row comparison: the statement's
  connection is closed after it.
- ORDER BY ... USING an operator of the schema's own: PostgreSQL refuses it (no operator
  class; only a superuser makes one) before anything runs.
- A range type whose subtype_diff is the schema's own, under a GiST index: the reading marks
  the table.
- A cascading foreign key (ON DELETE SET DEFAULT) to a table whose default is own code, a
  stored generated column of own code, an own aggregate's state function.
- A view of the schema's own code named qualified, quoted, and in U& escapes.
- A write key's single statements that may change the schema and read such a view
  (CREATE TABLE IF NOT EXISTS ... AS, EXPLAIN ANALYZE, CREATE TEMP TABLE ... AS): the query
  either does not run or the connection is closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, query, schema_seen
from tests.attacks.test_pass14_unknown_on_demand import TENANT, tenant_code
from tests.conftest import as_owner

__all__ = ["tenant_code"]  # (a fixture of the UNKNOWN module, used here as well)

_OPERATORS = ("<=", "=", "<>")


@pytest.fixture
async def own_code(
    pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient
) -> AsyncIterator[None]:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.claim14t(a text, b int) RETURNS bool"
        " LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(1470 + b) $$",
        *(f"DROP OPERATOR IF EXISTS public.{op} (text, int)" for op in _OPERATORS),
        *(
            f"CREATE OPERATOR public.{op} (LEFTARG = text, RIGHTARG = int,"
            " FUNCTION = public.claim14t)"
            for op in _OPERATORS
        ),
        "CREATE OR REPLACE FUNCTION public.claim14i(a int, b int) RETURNS bool"
        " LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(1480 + b) $$",
        "DO $$ BEGIN CREATE OPERATOR public.<<%>> (LEFTARG = int, RIGHTARG = int,"
        " FUNCTION = public.claim14i); EXCEPTION WHEN duplicate_function THEN NULL; END $$",
        # a range type whose subtype_diff takes a lock, under a GiST index of many pages
        "CREATE OR REPLACE FUNCTION public.diff14(a float8, b float8) RETURNS float8"
        " IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_try_advisory_lock(1443);"
        " RETURN a - b; END $$",
        "DO $$ BEGIN CREATE TYPE public.span14 AS RANGE (subtype = float8,"
        " subtype_diff = public.diff14); EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE TABLE IF NOT EXISTS public.spans14 (r public.span14)",
        "CREATE INDEX IF NOT EXISTS spans14_r ON public.spans14 USING gist (r)",
        "INSERT INTO public.spans14 SELECT public.span14(i, i + 1)"
        " FROM generate_series(1, 3000) AS i WHERE NOT EXISTS (SELECT FROM public.spans14)",
        # a cascade that runs a default of own code
        "CREATE OR REPLACE FUNCTION public.claim14f() RETURNS int LANGUAGE sql"
        " AS $$ SELECT CASE WHEN pg_try_advisory_lock(1491) THEN 0 ELSE 0 END $$",
        "CREATE TABLE IF NOT EXISTS public.parent14 (id int PRIMARY KEY)",
        "CREATE TABLE IF NOT EXISTS public.child14 (pid int DEFAULT public.claim14f()"
        " REFERENCES public.parent14 ON DELETE SET DEFAULT)",
        "INSERT INTO public.parent14 VALUES (0), (1) ON CONFLICT DO NOTHING",
        "INSERT INTO public.child14 SELECT 1 WHERE NOT EXISTS (SELECT FROM public.child14)",
        # a stored generated column and an aggregate of own code
        "CREATE OR REPLACE FUNCTION public.claim14g(n int) RETURNS int IMMUTABLE"
        " LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_try_advisory_lock(1492); RETURN n; END $$",
        "CREATE TABLE IF NOT EXISTS public.generated14 (n int,"
        " g int GENERATED ALWAYS AS (public.claim14g(n)) STORED)",
        "CREATE OR REPLACE FUNCTION public.step14(s int, n int) RETURNS int LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM pg_try_advisory_lock(1493); RETURN s + n; END $$",
        "CREATE OR REPLACE AGGREGATE public.total14(int) (SFUNC = public.step14,"
        " STYPE = int, INITCOND = '0')",
    )
    await schema_seen(client)
    yield
    as_owner(
        pair,
        *(f"DROP OPERATOR IF EXISTS public.{op} (text, int)" for op in _OPERATORS),
        "DROP FUNCTION IF EXISTS public.claim14t(text, int)",
        "INSERT INTO public.parent14 VALUES (1) ON CONFLICT DO NOTHING",
        "UPDATE public.child14 SET pid = 1",
    )


@pytest.mark.parametrize(
    ("key", "attack"),
    [
        ("read", "SELECT id FROM pub WHERE v IN (1, 2)"),
        ("read", "SELECT NULLIF(v, 3) FROM pub"),
        ("read", "SELECT id FROM pub WHERE v IS DISTINCT FROM 4"),
        ("read", "SELECT id FROM pub WHERE v = ANY (ARRAY[5])"),
        ("read", "SELECT id FROM pub WHERE v OPERATOR(public.<=) 6"),
        ("read", "SELECT id FROM pub WHERE ROW(v) = ROW(7)"),
        ("read", "SELECT id FROM pub WHERE id <<%>> 8"),
        ("read", "SELECT id FROM pub ORDER BY id USING <<%>>"),
        ("write", "INSERT INTO spans14 VALUES ('[5.5,6.5)')"),
        ("write", "DELETE FROM parent14 WHERE id = 1"),
        ("write", "INSERT INTO generated14 (n) VALUES (1)"),
        ("read", "SELECT total14(id) FROM pub"),
    ],
    ids=[
        "in-list-own-eq",
        "nullif-own-eq",
        "is-distinct-from-own-eq",
        "any-array-own-eq",
        "operator-qualified-own-le",
        "row-comparison-own-eq",
        "own-operator-by-name",
        "order-by-using-own-operator-refused",
        "range-subtype-diff-in-gist",
        "cascade-set-default-own-default",
        "stored-generated-column-own-function",
        "own-aggregate-state-function",
    ],
)
async def test_no_session_lock_outlives_own_code(
    client: httpx.AsyncClient, own_code: None, pair: LocalPair, key: str, attack: str
) -> None:
    assert advisory_locks(pair) == 0
    r = await query(client, key, attack)
    assert r.status_code < 500, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, f"a session lock outlived {attack!r}: {r.text}"


@pytest.mark.parametrize(
    ("key", "attack"),
    [
        ("read", "SELECT t FROM public.tenant_view14"),
        ("read", 'SELECT t FROM "tenant_view14"'),
        ("read", 'SELECT t FROM U&"tenant\\005fview14"'),
        ("write", "CREATE TABLE IF NOT EXISTS pub AS SELECT t FROM tenant_view14"),
        ("write", "EXPLAIN ANALYZE SELECT t FROM tenant_view14"),
        ("write", "CREATE TEMP TABLE t14 AS SELECT t FROM tenant_view14"),
    ],
    ids=[
        "view-qualified",
        "view-quoted",
        "view-unicode-escapes",
        "create-table-if-not-exists-as-view",
        "explain-analyze-view",
        "create-temp-table-as-view",
    ],
)
async def test_no_placeholder_from_a_view_spelled_otherwise(
    client: httpx.AsyncClient, tenant_code: None, key: str, attack: str
) -> None:
    r = await query(client, key, attack)
    assert r.status_code == 200, r.text
    seen = await query(client, "admin", TENANT)
    assert seen.status_code == 200, seen.text
    assert seen.json()["rows"] == [[None]], f"after {attack!r}: {seen.text}"
