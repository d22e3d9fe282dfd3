"""Nineteenth review pass (attacker): what was tried and held.

- a domain whose CHECK calls the database's own function reached on a read by a
  COALESCE with a literal (the literal is coerced to the domain), by jsonb_populate_record
  into the row type of a table with such a column, by a column definition list of
  jsonb_to_record naming the domain, and by a row constructor cast to that row type or to
  a composite type made with the domain (made, not altered later: that one is
  test_pass19_column_type_unseen.py);
- a domain whose DEFAULT calls the database's own function, on a table made with it (not
  retyped later: that one is test_pass19_column_type_unseen.py): UPDATE ... SET c = DEFAULT,
  INSERT ... ON CONFLICT DO UPDATE, MERGE ... WHEN NOT MATCHED THEN INSERT, a CTE's INSERT;
- an own enum with a cast of the database's own to json, reached by to_json / row_to_json /
  jsonb_agg of its table's rows with no name of the type in the statement;
- sorting, DISTINCT and a join on int4 while a btree class for int4 (not the default) has
  a comparison function of the database's own: PostgreSQL uses the default class;
- a read key's MERGE, INSERT in a CTE and SELECT ... FOR UPDATE (refused or rolled back);
- oversized requests: 5,000 statements in one transaction, a 5,000-deep nested array
  parameter: a 4xx or a 200, never a 500.
Each is followed by another key's request, and no session advisory lock is left.
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
    headers,
    one,
    several,
)
from tests.conftest import as_owner, login_role

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOCK = "$$ SELECT pg_try_advisory_lock(1919) IS NOT NULL $$"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    role, password = login_role(pair, "lowpriv")
    as_owner(
        pair,
        f"CREATE OR REPLACE FUNCTION public.ok19(v text) RETURNS bool LANGUAGE sql AS {LOCK}",
        "CREATE OR REPLACE FUNCTION public.def19() RETURNS text LANGUAGE sql"
        " AS $$ SELECT 'd' WHERE pg_try_advisory_lock(1919) $$",
        "DO $$ BEGIN CREATE DOMAIN public.chk19 AS text CHECK (public.ok19(VALUE));"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "DO $$ BEGIN CREATE DOMAIN public.dft19 AS text DEFAULT public.def19();"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE TABLE IF NOT EXISTS public.checked19 (id int PRIMARY KEY, c public.chk19)",
        "DO $$ BEGIN CREATE TYPE public.comp19 AS (f public.chk19);"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE TABLE IF NOT EXISTS public.defaulted19 (id int PRIMARY KEY, c public.dft19)",
        "DO $$ BEGIN CREATE TYPE public.mood19 AS ENUM ('happy', 'sad');"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE OR REPLACE FUNCTION public.mood19_json(m public.mood19) RETURNS json"
        " LANGUAGE sql AS $$ SELECT to_json(m::text) WHERE pg_try_advisory_lock(1919) $$",
        "DROP CAST IF EXISTS (public.mood19 AS json)",
        "CREATE CAST (public.mood19 AS json) WITH FUNCTION public.mood19_json(public.mood19)",
        "CREATE TABLE IF NOT EXISTS public.moods19 (id int, m public.mood19)",
        "GRANT SELECT, INSERT, UPDATE ON public.checked19, public.defaulted19 TO PUBLIC",
        "GRANT SELECT ON public.moods19 TO PUBLIC",
        "SELECT pg_advisory_unlock_all()",
    )
    with pair.primary.connect() as conn:
        # a btree class for int4 (not the default) whose comparison is the database's own
        conn.execute(
            "CREATE OR REPLACE FUNCTION public.tried19_cmp(a int4, b int4) RETURNS int4"
            " LANGUAGE plpgsql IMMUTABLE AS"
            f" $$ BEGIN IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock(1919);"
            " END IF; RETURN btint4cmp(a, b); END $$"
        )
        conn.execute(
            "DO $$ BEGIN CREATE OPERATOR CLASS public.int4_tried19_ops FOR TYPE int4"
            " USING btree AS OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=,"
            " OPERATOR 5 >, FUNCTION 1 public.tried19_cmp(int4, int4);"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
    with pair.primary.connect() as conn:  # (the owner's check would take the lock)
        conn.execute("ALTER TABLE public.checked19 DISABLE TRIGGER ALL")
        conn.execute("INSERT INTO public.checked19 VALUES (1, 'one') ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO public.defaulted19 VALUES (1, 'one') ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO public.moods19 SELECT 1, 'happy' WHERE NOT EXISTS"
                     " (SELECT FROM public.moods19)")  # fmt: skip
    async with attacked(
        pair,
        role,
        password,
        seen=True,
    ) as client:
        yield client


def nested(depth: int) -> str:
    """A body whose one parameter is an array nested `depth` deep (as raw JSON text: the
    json module cannot write it)."""
    return '{"sql": "SELECT $1::int[]", "params": [' + "[" * depth + "1" + "]" * depth + "]}"


CASES: list[tuple[str, str, tuple[str, dict[str, Any] | str]]] = [
    ("check-by-coalesce-literal", "read", one("SELECT coalesce(c, 'x') FROM checked19")),
    (
        "check-by-populate-record",
        "read",
        one('SELECT jsonb_populate_record(NULL::checked19, \'{"id": 2, "c": "x"}\')'),
    ),
    (
        "check-by-column-definition-list",
        "read",
        one('SELECT * FROM jsonb_to_record(\'{"c": "x"}\') AS r(c chk19)'),
    ),
    ("check-by-row-cast", "read", one("SELECT (ROW(3, 'x')::checked19).c")),
    ("check-by-composite-made-with-it", "read", one("SELECT (ROW('x')::comp19).f")),
    ("default-by-update-set-default", "write", one("UPDATE defaulted19 SET c = DEFAULT")),
    (
        "default-by-on-conflict",
        "write",
        one("INSERT INTO defaulted19 (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 1"),
    ),
    (
        "default-by-merge",
        "write",
        one(
            "MERGE INTO defaulted19 d USING (VALUES (7)) v(id) ON d.id = v.id"
            " WHEN NOT MATCHED THEN INSERT (id) VALUES (v.id)"
        ),
    ),
    (
        "default-by-cte-insert",
        "write",
        one("WITH i AS (INSERT INTO defaulted19 (id) VALUES (8) RETURNING 1) SELECT * FROM i"),
    ),
    ("json-cast-by-to-json", "read", one("SELECT to_json(t) FROM moods19 t")),
    ("json-cast-by-row-to-json", "read", one("SELECT row_to_json(t) FROM moods19 t")),
    ("json-cast-by-json-agg", "read", one("SELECT json_agg(m) FROM moods19")),
    (
        "read-key-merge",
        "read",
        one(
            "MERGE INTO defaulted19 d USING (VALUES (9)) v(id) ON d.id = v.id"
            " WHEN NOT MATCHED THEN INSERT (id) VALUES (v.id)"
        ),
    ),
    (
        "read-key-cte-insert",
        "read",
        one("WITH i AS (INSERT INTO defaulted19 (id) VALUES (10) RETURNING 1) SELECT 1"),
    ),
    ("read-key-for-update", "read", one("SELECT * FROM defaulted19 FOR UPDATE")),
    (
        "int4-sort-join-with-own-class-around",
        "read",
        one(
            "SELECT DISTINCT a FROM generate_series(1, 300) a"
            " JOIN generate_series(1, 300) b ON a = b ORDER BY a"
        ),
    ),
    ("5000-statements", "write", several(*["SELECT 1"] * 5000)),
    ("5000-deep-param", "read", ("/v1/query", nested(5000))),
]


@pytest.mark.parametrize(("key", "attack"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_attacks_that_held(
    served: httpx.AsyncClient,
    pair: LocalPair,
    key: str,
    attack: tuple[str, dict[str, Any] | str],
) -> None:
    assert advisory_locks(pair) == 0
    count = {"sql": "SELECT count(*)::int FROM defaulted19"}
    before = (await served.post("/v1/query", json=count, headers=headers("admin"))).json()
    path, body = attack
    r = await served.post(
        path,
        content=body if isinstance(body, str) else json.dumps(body),
        headers={**headers(key), "Content-Type": "application/json"},
    )
    assert r.status_code < 500, r.text
    after = await served.post(
        "/v1/query", json={"sql": "SELECT 1 AS one"}, headers=headers("admin")
    )
    assert after.json()["rows"] == [[1]], after.text
    assert advisory_locks(pair) == 0, f"a session lock outlived {attack!r}: {r.text}"
    if key == "read":  # a read key wrote nothing
        rows = await served.post("/v1/query", json=count, headers=headers("admin"))
        assert rows.json()["rows"] == before["rows"], (rows.text, r.text)
