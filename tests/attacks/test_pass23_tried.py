"""Twenty-third review pass (attacker): what was tried and held.

A domain whose CHECK calls a function of the schema's (taking a session advisory lock),
reached by a read key's pure query that writes nothing, through what coerces a value into
the domain without a table being written:
- a composite type with a field of the domain, from its text (`'(5)'::comp23t`);
- an array of the domain (`'{5}'::dom23t[]`);
- a table's row type with a column of the domain, filled by `json_populate_record`
  (`NULL::rel23t`: a relation named only as a type);
- a column definition list naming the domain (`json_to_record(..) AS x(d dom23t)`);
- `jsonb_populate_recordset` into the table's row type.
No session advisory lock outlives any of them (the type readings count each as code).
(The holes of this pass: test_pass23_pending_counters.py, test_pass23_pgbouncer_rollback.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, leaves_no_lock

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOCK = f"IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock(2323); END IF;"
SETUP = (
    "DROP TABLE IF EXISTS public.rel23t",
    "DROP TYPE IF EXISTS public.comp23t",
    "DROP DOMAIN IF EXISTS public.dom23t",
    "CREATE OR REPLACE FUNCTION public.ok23t(x int) RETURNS bool LANGUAGE plpgsql AS"
    f" $$ BEGIN {LOCK} RETURN true; END $$",
    "CREATE DOMAIN public.dom23t AS int CHECK (public.ok23t(VALUE))",
    "CREATE TYPE public.comp23t AS (d public.dom23t)",
    "CREATE TABLE public.rel23t (d public.dom23t)",
    f"GRANT SELECT ON public.rel23t TO {SERVICE}",
)
TEARDOWN = (
    "DROP TABLE IF EXISTS public.rel23t",
    "DROP TYPE IF EXISTS public.comp23t",
    "DROP DOMAIN IF EXISTS public.dom23t",
    "DROP FUNCTION IF EXISTS public.ok23t(int)",
)

ATTACKS = [
    "SELECT ('(5)'::comp23t).d AS d",
    "SELECT ('{5}'::dom23t[])[1] AS d",
    """SELECT (json_populate_record(NULL::rel23t, '{"d": 5}')).d AS d""",
    """SELECT d FROM json_to_record('{"d": 5}') AS x(d dom23t)""",
    """SELECT d FROM jsonb_populate_recordset(NULL::rel23t, '[{"d": 5}]')""",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        yield client


@pytest.mark.parametrize("attack", ATTACKS)
async def test_a_checked_domain_reached_by_a_read_leaves_no_lock(
    served: httpx.AsyncClient, pair: LocalPair, attack: str
) -> None:
    await leaves_no_lock(served, pair, "read", attack)
