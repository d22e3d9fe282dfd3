"""Twenty-first review pass (attacker): what was tried and held.

- a range type of the database's own whose subtype_diff is a PL/pgSQL function of the
  schema's owner (no superuser needed), which PostgreSQL runs with nothing of it named:
  the planner's selectivity estimate of a read key's `r @> 5` or `r <@ '[1,10]'` over the
  column's histograms (rangesel, get_position), and a write key's INSERT into a GiST index
  on the column (range_gist_penalty). It held, though not by a rule of its own:
  TYPE_CODE_SQL reads a type's dependencies only for types with a DEFAULT, but PostgreSQL
  14 and later give every range type a cast to its multirange whose function (the
  multirange's constructor) is in the schema, so the range counts as a type with casts of
  the database's own;
- spellings of TRUNCATE ... CASCADE into a table with an ON TRUNCATE trigger of the
  database's own: quoted and `U&` names, schema-qualified, `ONLY`, `TABLE a, b`, a comment
  before CASCADE; and a TRUNCATE of an inheritance parent whose child has the trigger;
- the reset-then-read judgement: a write key's transaction of an empty DROP (the facts
  become unknown) and the TRUNCATE of that inheritance parent;
- a row-level security policy whose subquery reads a view of the database's own code,
  named `"public"."pview21"` in the policy, read by a read key;
- spellings of settings and locks behind PgBouncer, read from the tree alone
  (app/sql/transaction_pooling.py): `(2121::bigint).pg_advisory_lock`,
  `U&"pg_advisory_lock"(1)`, `FROM pg_catalog.pg_advisory_lock(1)`, set_config with named
  arguments in any order, `is_local => true`, `'false'::bool`, `U&'app\\002ex'`, `E'app\\x2ex'`,
  `'app.x'::text`, `('app.x')`, `'App.X'`, `SET LOCAL "app.x"`.
Each is followed by another key's request; no session advisory lock, no custom setting is
left. (The holes of this pass: test_pass21_pgbouncer_own_code.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from app.sql import transaction_pooling
from app.sql.tree import parse
from tests.attacks.conftest import advisory_locks, attacked_on, headers

pytestmark = pytest.mark.asyncio(loop_scope="module")

GUARD = f"IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock(2122);"
LEAVE = GUARD + " PERFORM set_config('app.x21t', 'evil', false); END IF;"
SETUP = (
    "CREATE OR REPLACE FUNCTION public.diff21t(a int4, b int4) RETURNS float8"
    f" LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN {LEAVE} RETURN a - b; END $$",
    "CREATE OR REPLACE FUNCTION public.trig21t() RETURNS trigger LANGUAGE plpgsql AS"
    f" $$ BEGIN {LEAVE} RETURN NULL; END $$",
    "CREATE OR REPLACE FUNCTION public.own21t() RETURNS int LANGUAGE plpgsql STABLE AS"
    f" $$ BEGIN {LEAVE} RETURN 1; END $$",
    "DROP TABLE IF EXISTS public.ranges21t, public.indexed21t, public.tchild21t,"
    " public.tparent21t, public.tother21t, public.tinhchild21t, public.tinh21t, public.pol21t",
    "DROP VIEW IF EXISTS public.pview21t",
    "DROP TYPE IF EXISTS public.range21t",
    "CREATE TYPE public.range21t AS RANGE (subtype = int4, subtype_diff = public.diff21t)",
    "CREATE TABLE public.ranges21t (id int, r public.range21t)",
    "INSERT INTO public.ranges21t SELECT g, public.range21t(g, g + g % 7 + 1)"
    " FROM generate_series(1, 500) g",
    "ANALYZE public.ranges21t",
    "CREATE TABLE public.indexed21t (id int, r public.range21t)",
    "CREATE INDEX ON public.indexed21t USING gist (r)",
    "INSERT INTO public.indexed21t SELECT g, public.range21t(g, g + g % 7 + 1)"
    " FROM generate_series(1, 2000) g",
    "CREATE TABLE public.tparent21t (id int PRIMARY KEY)",
    "CREATE TABLE public.tchild21t (p int REFERENCES public.tparent21t)",
    "CREATE TABLE public.tother21t (id int)",
    "CREATE TRIGGER t21t AFTER TRUNCATE ON public.tchild21t"
    " FOR EACH STATEMENT EXECUTE FUNCTION public.trig21t()",
    "CREATE TABLE public.tinh21t (id int)",
    "CREATE TABLE public.tinhchild21t () INHERITS (public.tinh21t)",
    "CREATE TRIGGER t21t AFTER TRUNCATE ON public.tinhchild21t"
    " FOR EACH STATEMENT EXECUTE FUNCTION public.trig21t()",
    "CREATE VIEW public.pview21t AS SELECT public.own21t() AS n",
    "CREATE TABLE public.pol21t (id int)",
    "INSERT INTO public.pol21t VALUES (1)",
    "ALTER TABLE public.pol21t ENABLE ROW LEVEL SECURITY",
    'CREATE POLICY p21t ON public.pol21t USING (id IN (SELECT n FROM "public"."pview21t"))',
    "GRANT SELECT ON public.ranges21t, public.pview21t, public.pol21t TO PUBLIC",
    "GRANT SELECT, INSERT ON public.indexed21t TO PUBLIC",
    "GRANT SELECT, TRUNCATE ON public.tparent21t, public.tchild21t, public.tother21t,"
    " public.tinh21t, public.tinhchild21t TO PUBLIC",
)
TEARDOWN = (
    "DROP TABLE IF EXISTS public.ranges21t, public.indexed21t, public.tchild21t,"
    " public.tparent21t, public.tother21t, public.tinhchild21t, public.tinh21t, public.pol21t",
    "DROP VIEW IF EXISTS public.pview21t",
    "DROP TYPE IF EXISTS public.range21t",
    "DROP FUNCTION IF EXISTS public.diff21t(int4, int4), public.trig21t(), public.own21t()",
)
CLEAN = "SELECT current_setting('app.x21t', true) IS NULL AS clean"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked_on(pair, SETUP, TEARDOWN, mirror_dsn=None) as client:
        yield client


Attack = list[tuple[str, dict[str, object]]]


def one(sql: str) -> Attack:
    return [("/v1/query", {"sql": sql})]


def several(*sqls: str) -> Attack:
    return [("/v1/transaction", {"statements": [{"sql": sql} for sql in sqls]})]


CASES: list[tuple[str, str, Attack]] = [
    ("range-estimate", "read", one("SELECT count(*)::int AS n FROM ranges21t WHERE r @> 5")),
    (
        "range-estimate-contained",
        "read",
        one("SELECT count(*)::int AS n FROM ranges21t WHERE r <@ '[1,10]'"),
    ),
    (
        "range-gist-insert",
        "write",
        one("INSERT INTO indexed21t SELECT id + 5000, r FROM indexed21t WHERE id <= 300"),
    ),
    ("truncate-quoted-cascade", "write", one('TRUNCATE "tparent21t" CASCADE')),
    ("truncate-unicode-cascade", "write", one('TRUNCATE U&"tparent\\0032\\0031t" CASCADE')),
    ("truncate-only-cascade", "write", one("TRUNCATE ONLY public.tparent21t CASCADE")),
    (
        "truncate-table-list-cascade",
        "write",
        one('TRUNCATE TABLE tother21t, "public".tparent21t /* restrict? */ CASCADE'),
    ),
    ("truncate-inheritance-parent", "write", one("TRUNCATE tinh21t")),
    (
        "truncate-inheritance-parent-judged-later",
        "write",
        several("DROP TABLE IF EXISTS nothing21t", "TRUNCATE TABLE tinh21t RESTRICT"),
    ),
    ("policy-subquery-view", "read", one("SELECT count(*)::int AS n FROM pol21t")),
]


@pytest.mark.parametrize(("key", "attack"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_attacks_that_held(
    served: httpx.AsyncClient, pair: LocalPair, key: str, attack: Attack
) -> None:
    assert advisory_locks(pair) == 0
    for path, body in attack:
        r = await served.post(path, json=body, headers=headers(key))
        assert r.status_code == 200, r.text
    other = await served.post("/v1/query", json={"sql": CLEAN}, headers=headers("admin"))
    assert other.json()["rows"] == [[True]], other.text
    assert advisory_locks(pair) == 0, f"a session lock outlived {attack!r}"


REFUSED_BEHIND_PGBOUNCER = [
    "SELECT (2121::bigint).pg_advisory_lock",
    'SELECT U&"pg_advisory_lock"(1)',
    "SELECT * FROM pg_catalog.pg_advisory_lock(1)",
    "SELECT set_config(setting_name => 'app.x', new_value => 'v', is_local => true)",
    "SELECT set_config(is_local => false, new_value => 'v', setting_name => 'search_path')",
    "SELECT set_config('search_path', 'v', is_local => true)",
    "SELECT set_config('statement_timeout', '0', 'false'::bool)",
    "SELECT set_config(U&'app\\002ex', 'v', true)",
    "SELECT set_config(E'app\\x2ex', 'v', true)",
    "SELECT set_config('app.x'::text, 'v', true)",
    "SELECT set_config(('app.x'), 'v', true)",
    "SELECT set_config('App.X', 'v', true)",
    "SET LOCAL \"app.x\" = 'v'",
    "SET LOCAL default_transaction_read_only = off",
]


@pytest.mark.parametrize("sql", REFUSED_BEHIND_PGBOUNCER)
async def test_spellings_refused_behind_pgbouncer(sql: str) -> None:
    assert transaction_pooling.refusal(parse(sql)) is not None, sql
