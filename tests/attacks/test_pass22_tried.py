"""Twenty-second review pass (attacker): what was tried and held.

- a domain whose CHECK calls a function of the schema's (taking a session advisory lock),
  reached only through a composite type's field, and through an array of that composite:
  a write key's INSERT of a value of the table's column (`ROW(5)`, `'(5)'::comp22t` from a
  SELECT, `ARRAY['(5)'::comp22t]`), then another key's request: no session advisory lock is
  left (the composite and array walk of TYPE_CODE_SQL / COLUMNS_SQL counts the table);
- a column default calling a function of the schema's, reached by an INSERT through an
  updatable view over the table that names no column with the default.
(The holes of this pass: test_pass22_pgbouncer_commit.py, test_pass22_session_traces.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, leaves_no_lock

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOCK = f"IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock(2223); END IF;"
SETUP = (
    "DROP TABLE IF EXISTS public.comp22t_rows, public.arr22t_rows, public.def22t",
    "DROP TYPE IF EXISTS public.comp22t",
    "DROP DOMAIN IF EXISTS public.dom22t",
    "CREATE OR REPLACE FUNCTION public.ok22t(x int) RETURNS bool LANGUAGE plpgsql AS"
    f" $$ BEGIN {LOCK} RETURN true; END $$",
    "CREATE DOMAIN public.dom22t AS int CHECK (public.ok22t(VALUE))",
    "CREATE TYPE public.comp22t AS (d public.dom22t)",
    "CREATE TABLE public.comp22t_rows (c public.comp22t)",
    "CREATE TABLE public.arr22t_rows (c public.comp22t[])",
    "CREATE OR REPLACE FUNCTION public.def22t_v() RETURNS int LANGUAGE plpgsql AS"
    f" $$ BEGIN {LOCK} RETURN 1; END $$",
    "CREATE TABLE public.def22t (id int, v int DEFAULT public.def22t_v())",
    "CREATE OR REPLACE VIEW public.def22t_view AS SELECT id FROM public.def22t",
    f"GRANT SELECT, INSERT ON public.comp22t_rows, public.arr22t_rows, public.def22t,"
    f" public.def22t_view TO {SERVICE}",
)
TEARDOWN = (
    "DROP VIEW IF EXISTS public.def22t_view",
    "DROP TABLE IF EXISTS public.comp22t_rows, public.arr22t_rows, public.def22t",
    "DROP TYPE IF EXISTS public.comp22t",
    "DROP DOMAIN IF EXISTS public.dom22t",
    "DROP FUNCTION IF EXISTS public.ok22t(int), public.def22t_v()",
)

ATTACKS = [
    "INSERT INTO comp22t_rows VALUES (ROW(5))",
    "INSERT INTO comp22t_rows SELECT format('(%s)', g)::comp22t FROM generate_series(1, 3) g",
    "INSERT INTO arr22t_rows VALUES (ARRAY['(5)'::comp22t])",
    "INSERT INTO def22t_view (id) VALUES (1)",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        yield client


@pytest.mark.parametrize("attack", ATTACKS)
async def test_code_through_composites_and_views_leaves_no_lock(
    served: httpx.AsyncClient, pair: LocalPair, attack: str
) -> None:
    await leaves_no_lock(served, pair, "write", attack)
