"""Eighteenth review pass (attacker): what was tried and held.

- a range type's subtype_diff function of the database's own, which PostgreSQL runs with no
  name of it in the statement: the planner's estimate of `col <@ const` from the column's
  histogram (a read key) and a GiST index's penalty on insert (a write key). The range's
  multirange constructor is its cast (range -> multirange), a function of the database's
  own, so the type counts as code and its relations with it;
- an event trigger (made by a superuser) taking a session advisory lock on a write key's
  DDL, refused (CREATE TABLE where the login may not) or empty (DROP TABLE IF EXISTS):
  the DDL's reset releases the lock (its custom settings are test_pass18_event_triggers.py);
- the database's own operators on its own enum reached by name with no operator node in the
  raw tree (LIKE, NULLIF, IS DISTINCT FROM, IN, JOIN USING) or by a GROUP BY, and a write
  through a view WITH CHECK OPTION whose condition calls its own function: each is judged
  to run code and its connection goes;
- values Python cannot hold or JSON cannot say (infinite and year-294276 timestamps, 'NaN'
  and infinite numerics, BC dates, multiranges, aclitem, oidvector, duplicate column names)
  and parameters out of range (2**70 for an int, a ragged nested array), extreme limits
  (timeout_ms 10**18): a 200 or a 400, never a 500, on /v1/query;
- a table whose own policy calls the database's own function, read through EXPLAIN ANALYZE,
  a cursor in a transaction (DECLARE, FETCH) and a LATERAL subquery: each is seen.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import (
    advisory_locks,
    attacked,
    event_trigger_on,
    headers,
    one,
    several,
)
from tests.conftest import as_owner, login_role

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOCK = f"$$ SELECT pg_try_advisory_lock(1822) IS NOT NULL AND session_user = '{SERVICE}' $$"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    role, password = login_role(pair, "lowpriv")
    as_owner(
        pair,
        # a range whose subtype_diff is the database's own
        "CREATE OR REPLACE FUNCTION public.r18t_diff(a float8, b float8) RETURNS float8"
        " LANGUAGE plpgsql IMMUTABLE AS"
        " $$ BEGIN PERFORM pg_try_advisory_lock(1822); RETURN a - b; END $$",
        "DO $$ BEGIN CREATE TYPE public.r18t AS RANGE (SUBTYPE = float8,"
        " SUBTYPE_DIFF = public.r18t_diff); EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE TABLE IF NOT EXISTS public.spans18t (id int PRIMARY KEY, r public.r18t)",
        "INSERT INTO public.spans18t SELECT g, public.r18t(g, g + 5)"
        " FROM generate_series(1, 300) g ON CONFLICT DO NOTHING",
        "ANALYZE public.spans18t",
        "CREATE TABLE IF NOT EXISTS public.spans18tg (r public.r18t)",
        "CREATE INDEX IF NOT EXISTS spans18tg_r ON public.spans18tg USING gist (r)",
        "INSERT INTO public.spans18tg SELECT public.r18t(g, g + 1) FROM generate_series(1, 20) g",
        # an enum with operators of the database's own
        "DO $$ BEGIN CREATE TYPE public.mood18 AS ENUM ('happy', 'sad');"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE OR REPLACE FUNCTION public.mood18_like(a public.mood18, b text) RETURNS bool"
        f" LANGUAGE sql AS {LOCK}",
        "CREATE OR REPLACE FUNCTION public.mood18_eq(a public.mood18, b public.mood18)"
        f" RETURNS bool LANGUAGE sql AS {LOCK}",
        "DROP OPERATOR IF EXISTS public.~~ (public.mood18, text)",
        "CREATE OPERATOR public.~~ (LEFTARG = public.mood18, RIGHTARG = text,"
        " FUNCTION = public.mood18_like)",
        "DROP OPERATOR IF EXISTS public.= (public.mood18, public.mood18)",
        "CREATE OPERATOR public.= (LEFTARG = public.mood18, RIGHTARG = public.mood18,"
        " FUNCTION = public.mood18_eq)",
        "CREATE TABLE IF NOT EXISTS public.moods18 (m public.mood18)",
        "INSERT INTO public.moods18 VALUES ('happy')",
        "CREATE OR REPLACE VIEW public.checked18 AS SELECT * FROM public.moods18"
        " WHERE m::text <> public.mood18_like(m, 'x')::text WITH CHECK OPTION",
        "GRANT SELECT ON public.spans18t, public.moods18 TO PUBLIC",
        "GRANT SELECT, INSERT ON public.spans18tg, public.checked18 TO PUBLIC",
        # an event trigger's function (only the service's sessions are touched)
        "CREATE OR REPLACE FUNCTION public.lock18t() RETURNS event_trigger LANGUAGE plpgsql AS"
        f" $$ BEGIN IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock(1822);"
        " END IF; END $$",
        # a table whose own policy calls the database's own function
        f"CREATE OR REPLACE FUNCTION public.member18t() RETURNS bool LANGUAGE sql AS {LOCK}",
        "CREATE TABLE IF NOT EXISTS public.members18t (ok bool)",
        "INSERT INTO public.members18t SELECT true"
        " WHERE NOT EXISTS (SELECT FROM public.members18t)",
        "ALTER TABLE public.members18t ENABLE ROW LEVEL SECURITY",
        "DROP POLICY IF EXISTS member ON public.members18t",
        "CREATE POLICY member ON public.members18t USING (public.member18t())",
        "GRANT SELECT ON public.members18t TO PUBLIC",
        "SELECT pg_advisory_unlock_all()",
    )
    tags = "'CREATE TABLE', 'DROP TABLE'"
    try:
        with event_trigger_on(pair, "lock18t", "ddl_command_start", tags, "public.lock18t"):
            async with attacked(pair, role, password, seen=True) as client:
                yield client
    finally:
        # Operators named `=` and `~~` of the database's own make every later statement that
        # uses those names (in any test on this server) count as calling its code.
        as_owner(
            pair,
            "DROP OPERATOR IF EXISTS public.~~ (public.mood18, text)",
            "DROP OPERATOR IF EXISTS public.= (public.mood18, public.mood18)",
        )


ODD_VALUES = (
    "SELECT 'infinity'::date AS a, '-infinity'::timestamptz AS b,"
    " '294276-12-31 23:59:59'::timestamp AS c, '4713-01-01 BC'::date AS d,"
    " 'NaN'::numeric AS e, 'Infinity'::numeric AS f, '-Infinity'::float8 AS g,"
    " interval '178000000 years' AS h, '24:00:00+14'::timetz AS i,"
    " '{[1,2)}'::int4multirange AS j, '{1}'::oidvector AS k, 1 AS l, 2 AS l,"
    " ARRAY[ROW(1, 'a')] AS m, '[1:2][3:4]={{1,2},{3,4}}'::int[] AS n"
)


CASES: list[tuple[str, str, tuple[str, dict[str, Any]]]] = [
    ("range-planner-estimate", "read", one("SELECT count(*) FROM spans18t WHERE r <@ '[10,50)'")),
    ("range-gist-insert-penalty", "write", one("INSERT INTO spans18tg VALUES ('[1,3)')")),
    ("event-trigger-refused-ddl", "write", one("CREATE TABLE public.made18t (a int)")),
    ("event-trigger-empty-drop", "write", one("DROP TABLE IF EXISTS public.nothing18t")),
    ("own-like-operator", "read", one("SELECT count(*) FROM moods18 WHERE m LIKE 'h%'")),
    ("own-eq-by-nullif", "read", one("SELECT NULLIF(m, 'sad') FROM moods18")),
    ("own-eq-by-is-distinct", "read", one("SELECT m IS DISTINCT FROM 'sad' FROM moods18")),
    ("own-eq-by-in-list", "read", one("SELECT m IN ('sad') FROM moods18")),
    (
        "own-eq-by-join-using",
        "read",
        one("SELECT count(*) FROM moods18 a JOIN moods18 b USING (m)"),
    ),
    ("own-type-group-by", "read", one("SELECT m FROM moods18 GROUP BY m")),
    ("view-check-option-own-code", "write", one("INSERT INTO checked18 VALUES ('sad')")),
    ("explain-analyze-policy-table", "read", one("EXPLAIN ANALYZE SELECT * FROM members18t")),
    (
        "cursor-over-policy-table",
        "read",
        several("DECLARE c CURSOR FOR SELECT * FROM members18t", "FETCH ALL FROM c"),
    ),
    (
        "lateral-policy-table",
        "read",
        one("SELECT * FROM (VALUES (1)) v(a), LATERAL (SELECT ok FROM members18t) m"),
    ),
    ("odd-output-values", "read", one(ODD_VALUES)),
    ("int-param-2-pow-70", "read", one("SELECT $1::int", params=[2**70])),
    ("ragged-array-param", "read", one("SELECT $1::int[]", params=[[[1], [2, 3]]])),
    ("timeout-ms-10-pow-18", "read", one("SELECT 1", timeout_ms=10**18)),
]


@pytest.mark.parametrize(("key", "attack"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_attacks_that_held(
    served: httpx.AsyncClient, pair: LocalPair, key: str, attack: tuple[str, dict[str, Any]]
) -> None:
    assert advisory_locks(pair) == 0
    path, body = attack
    r = await served.post(
        path,
        content=json.dumps(body),
        headers={**headers(key), "Content-Type": "application/json"},
    )
    assert r.status_code < 500, r.text
    after = await served.post(
        "/v1/query", json={"sql": "SELECT 1 AS one"}, headers=headers("admin")
    )
    assert after.json()["rows"] == [[1]], after.text
    assert advisory_locks(pair) == 0, f"a session lock outlived {attack!r}: {r.text}"
