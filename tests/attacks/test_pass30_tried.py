"""Thirtieth review pass (attacker): what was tried and held.

- A superuser's CREATE OR REPLACE of a built-in of LANGUAGE internal
  (`pg_catalog.lcm(int4, int4)` as plpgsql that takes a session advisory lock): the catalog
  readings do not see it either (its OID stays below 16384), but PostgreSQL calls an
  internal built-in by its OID from fmgr's own table (fmgr_isbuiltin), whatever pg_proc now
  says, so `SELECT lcm(4, 6)` runs the C code and leaves nothing. (The same replace of a
  built-in of LANGUAGE sql is the hole of test_pass30_replaced_builtin.py.)
- ALTER FUNCTION pg_catalog.rpad(text, int4) SET application_name (a superuser's setting on
  a built-in of LANGUAGE sql, which does run through fmgr_security_definer): the setting
  holds only while the call runs and is put back at its end, so the next key sees the
  session's own application_name.
- A function of the database's own in public with a catalog function's name and signature,
  `public.rpad(text, int4)`, taking a session advisory lock, called unqualified: pg_catalog
  comes first in the search path, so pg_catalog's runs; and the name is one of
  OWN_FUNCTIONS_SQL's, so the statement counts as running code anyway (connection reset,
  lock gone).
- The same with `public.rpad(text, int8)` (a signature that fits worse than
  pg_catalog's for `rpad('ab', 4)`, better for `rpad('ab', 4::int8)`): counted by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import (
    attacked_on,
    end_sessions_holding,
    leaves_no_lock,
    query,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOCK = 3031
TAKE_LOCK = f"IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock({LOCK}); END IF;"


def original(pair: LocalPair, function: str) -> str:
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT pg_get_functiondef(%s::regprocedure)", [function]).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture(autouse=True)
def lock_let_go(pair: LocalPair) -> Iterator[None]:
    yield
    end_sessions_holding(pair, LOCK)


@pytest.fixture
def internal_replaced(pair: LocalPair) -> Iterator[None]:
    definition = original(pair, "pg_catalog.lcm(int4, int4)")
    with pair.primary.connect() as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION pg_catalog.lcm(int4, int4) RETURNS int4"
            f" LANGUAGE plpgsql AS $$ BEGIN {TAKE_LOCK} RETURN 0; END $$"
        )
    try:
        yield
    finally:
        with pair.primary.connect() as conn:
            conn.execute(definition)


@pytest_asyncio.fixture(loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked_on(pair, (), ()) as client:
        yield client


async def test_replaced_internal_builtin_runs_its_c_code(
    internal_replaced: None, served: httpx.AsyncClient, pair: LocalPair
) -> None:
    r = await query(served, "read", "SELECT lcm(4, 6) AS m")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[12]], r.text
    await leaves_no_lock(served, pair, "read", "SELECT lcm(4, 6)", "a replaced internal built-in")


@pytest.fixture
def builtin_setting(pair: LocalPair) -> Iterator[None]:
    with pair.primary.connect() as conn:
        conn.execute("ALTER FUNCTION pg_catalog.rpad(text, int4) SET application_name = 'x30'")
    try:
        yield
    finally:
        with pair.primary.connect() as conn:
            conn.execute("ALTER FUNCTION pg_catalog.rpad(text, int4) RESET ALL")


async def test_builtin_with_a_setting_puts_it_back(
    builtin_setting: None, served: httpx.AsyncClient
) -> None:
    r = await query(served, "read", "SELECT rpad('ab', 4) AS m")
    assert r.status_code == 200, r.text
    r = await query(served, "admin", "SELECT current_setting('application_name') AS a")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] != [["x30"]], r.text


OWN_RPAD = (
    "CREATE OR REPLACE FUNCTION public.rpad(a text, n {t}) RETURNS text LANGUAGE plpgsql"
    f" AS $$ BEGIN {TAKE_LOCK} RETURN a; END $$"
)


@pytest.mark.parametrize(
    ("signature", "attack"),
    [("int4", "SELECT rpad('ab', 4)"), ("int8", "SELECT rpad('ab', 4::int8)")],
)
async def test_own_function_named_like_a_builtin_is_counted(
    pair: LocalPair, signature: str, attack: str
) -> None:
    setup = (OWN_RPAD.format(t=signature),)
    teardown = (f"DROP FUNCTION IF EXISTS public.rpad(text, {signature})",)
    async with attacked_on(pair, setup, teardown) as client:
        await leaves_no_lock(client, pair, "read", attack, f"public.rpad(text, {signature})")
