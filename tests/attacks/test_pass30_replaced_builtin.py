"""Thirtieth review pass (attacker): a superuser's CREATE OR REPLACE of a built-in function
keeps its OID (below 16384), so nothing the service reads of the catalog sees it, and a
statement that calls the built-in by its name runs the database's own code unseen. Fixed: a
catalog function in a language other than internal, C or SQL makes the catalog altered
(app/sql/schema_queries.py ALTERED_SQL), and a change of that flag is a change of the
fingerprint. (A replacement in LANGUAGE sql is still not seen.)

A superuser may replace the body of a function of pg_catalog (PostgreSQL checks only the
routine's kind, its return type and its parameters' names on a replace, not its language):

    CREATE OR REPLACE FUNCTION pg_catalog.rpad(text, int4) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM pg_try_advisory_lock(3030); RETURN rpad($1, $2, ' '); END $$

(what a DBA's "fix" of a catalog function, or an extension's script, may do). A built-in of
LANGUAGE internal is called by its OID from fmgr's own table whatever pg_proc says (tried:
held), but the built-ins of LANGUAGE sql (rpad(text, int), lpad, log10(numeric), round(numeric),
age(timestamp), quote_literal(anyelement), textanycat, the `||` of text and a number...) run
what pg_proc now holds. The row keeps its OID (below 16384) and pronamespace 11:
app/sql/schema_queries.py ALTERED_SQL counts only a function in pg_catalog with an OID from
16384 up, OWN_FUNCTIONS_SQL only functions outside pg_catalog, the dependency reading only
objects from 16384 up, and the fingerprint only rows with OIDs from 16384 up (`_counted`), so
not even the periodic reading notices. `SELECT rpad('ab', 4)` calls a name of
catalog.CLEAN_FUNCTIONS: a pure read with no code (SchemaCode.runs_unseen_code is False), so
its connection goes back as it is, and the session advisory lock the new body took (the
READ ONLY rollback does not undo it) is the next key's: the admin key's next request runs on
a session that holds a lock of the read key's making. A view over the call (its rule depends
on the pinned function only) does the same, and so does `SELECT 'order ' || 42` once
textanycat (the `||` of a text and a non-text, LANGUAGE sql) is replaced: a statement that
names no function at all.

Root cause: the catalog readings tell the database's own code from the catalog's by OID
alone (`oid >= 16384` in ALTERED_SQL, _USES and the fingerprint's _counted), and a replaced
built-in keeps its OID. The safe behaviour: the fingerprint also counts pg_catalog's pg_proc
rows of a language other than internal and c (their (oid, xmin), which a replace or an
ALTER FUNCTION changes), and such a row that differs from what the service first saw (or a
plpgsql/own-language function in pg_catalog at all) makes every statement count as running
code (SchemaCode.catalog_altered): connection reset after, traces forgotten before, no lane.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, end_sessions_holding, leaves_no_lock

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOCK = 3030
BUILTIN = "pg_catalog.rpad(text, int4)"
REPLACED = (
    "CREATE OR REPLACE FUNCTION pg_catalog.rpad(text, int4) RETURNS text LANGUAGE plpgsql"
    " AS $$ BEGIN"
    f" IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock({LOCK}); END IF;"
    " RETURN pg_catalog.rpad($1, $2, ' '); END $$"
)
SETUP = (
    "DROP VIEW IF EXISTS public.v30pad",
    "CREATE VIEW public.v30pad AS SELECT rpad('ab', 4) AS m",
    "GRANT SELECT ON public.v30pad TO PUBLIC",
)
TEARDOWN = ("DROP VIEW IF EXISTS public.v30pad",)


@pytest.fixture(scope="module")
def replaced(pair: LocalPair) -> Iterator[None]:
    """The superuser (the harness's login) replaces the built-in's body; its definition as
    initdb made it is put back after."""
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT pg_get_functiondef(%s::regprocedure)", [BUILTIN]).fetchone()
        assert row is not None
        original = str(row[0])
        conn.execute(REPLACED)
    try:
        yield
    finally:
        with pair.primary.connect() as conn:
            conn.execute(original)


@pytest_asyncio.fixture(loop_scope="module")
async def served(pair: LocalPair, replaced: None) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        yield client


@pytest.fixture(autouse=True)
def lock_let_go(pair: LocalPair) -> Iterator[None]:
    """What one test left (the lock) is not the next test's to find (each test has a
    service of its own: a service whose connection was ended reads the catalog anew)."""
    yield
    end_sessions_holding(pair, LOCK)


async def test_replaced_builtin_called_by_name_leaves_its_lock(
    served: httpx.AsyncClient, pair: LocalPair
) -> None:
    await leaves_no_lock(served, pair, "read", "SELECT rpad('ab', 4)", "a replaced built-in")


async def test_view_over_replaced_builtin_leaves_its_lock(
    served: httpx.AsyncClient, pair: LocalPair
) -> None:
    await leaves_no_lock(served, pair, "read", "SELECT m FROM v30pad", "a view over rpad()")


CONCAT = "pg_catalog.textanycat(text, anynonarray)"


@pytest.fixture
def concat_replaced(pair: LocalPair) -> Iterator[None]:
    """The `||` of a text and a number (textanycat, LANGUAGE sql) replaced the same way."""
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT pg_get_functiondef(%s::regprocedure)", [CONCAT]).fetchone()
        assert row is not None
        original = str(row[0])
        conn.execute(
            "CREATE OR REPLACE FUNCTION pg_catalog.textanycat(text, anynonarray) RETURNS text"
            " LANGUAGE plpgsql AS $$ BEGIN"
            f" IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock({LOCK}); END IF;"
            " RETURN $1 OPERATOR(pg_catalog.||) $2::pg_catalog.text; END $$"
        )
    try:
        yield
    finally:
        with pair.primary.connect() as conn:
            conn.execute(original)


async def test_replaced_concatenation_runs_for_a_statement_naming_no_function(
    concat_replaced: None, served: httpx.AsyncClient, pair: LocalPair
) -> None:
    await leaves_no_lock(served, pair, "read", "SELECT 'order ' || 42", "'order ' || 42")
