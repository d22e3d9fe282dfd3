"""Twenty-eighth review pass (attacker): a cast between two catalog types whose function is
the database's own runs that function for a statement that names nothing of the schema's.
Fixed: such a cast makes every statement count as running code (app/sql/schema_code.py
SchemaCode.catalog_altered, read by schema_queries.ALTERED_SQL).

A superuser may make a cast between two types of pg_catalog (they are the bootstrap
superuser's, and a type's owner may make its casts): `CREATE CAST (int4 AS text) WITH
FUNCTION public.i2t28(int4) AS ASSIGNMENT`, the kind of cast an extension or a DBA adds so
that an application's `id::text` formats ids its own way (int4 to text has no pg_cast row
of its own: PostgreSQL otherwise converts through the types' I/O functions, so the new row
is used for every cast of an int4 to text). PostgreSQL then runs public.i2t28 for

    read key:  SELECT 42::text                (also CAST(42 AS text), or inside a call)
    read key:  SELECT 'order ' || 42          (no cast written: textanycat's SQL body
                                               casts, `$2::pg_catalog.text`; quote_literal's
                                               too; ARRAY[42]::text[] casts each element)
    write key: INSERT INTO s28c (v) VALUES (7)  (v text: the assignment cast, no type named)
    read key:  SELECT t FROM v28c             (a view `SELECT 'order ' || 42`: its rule
                                               depends on textanycat, pinned, not on the
                                               cast, so the default-closed rule misses it)

app/sql/schema_queries.py TYPE_CODE_SQL counts a cast whose function is the database's own
only by its source or target type *of the database's own* (`ty.typnamespace NOT IN
('pg_catalog', ...)`: "only a type's owner may make a cast; a catalog type on the other side
runs nothing by itself"), so neither int4 nor text is counted, no relation is named, and the
tree's names (`text`, `||`, quote_literal) are no own function's or operator's. The statement
is a pure read with Effect.NONE (it may share a lane): its connection goes back as it is,
and nothing is forgotten before it (no DISCARD SEQUENCES). So what the function leaves (a
session advisory lock, which the read key's READ ONLY rollback does not undo) is the next
key's, and what another key left in the session (its lastval()) is the function's to read
and return; behind PgBouncer too (there the next transaction's opening lets go of the lock,
but nothing forgets the sequence values before the cast runs).

Root cause: TYPE_CODE_SQL's pg_cast branch assumes one side of a cast whose function is the
database's own is a type of the database's own. The safe behaviour: such a cast counts
whatever its types' schemas (e.g. every statement that may cast, a TypeCast, `||`, an
assignment to a column of either type, counted as code while one exists: closed after,
traces forgotten before, no lane; or the reading refuses to call such facts known).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import (
    advisory_locks,
    attacked_on,
    behind_one_server_connection,
    end_sessions_holding,
    leaves_no_lock,
    query,
    schema_seen,
)
from tests.conftest import as_owner
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOCK = 2828
SETUP = (
    "DROP VIEW IF EXISTS public.v28c",
    "DROP TABLE IF EXISTS public.s28c",
    "CREATE TABLE public.s28c (id serial PRIMARY KEY, v text)",
    "GRANT SELECT, INSERT ON public.s28c TO PUBLIC",
    "GRANT USAGE ON SEQUENCE public.s28c_id_seq TO PUBLIC",
    # The cast's function: formats the number, takes a session advisory lock (as a
    # job-claiming helper would), and for 2828 says what lastval() the session had.
    "CREATE OR REPLACE FUNCTION public.i2t28(i int4) RETURNS text LANGUAGE plpgsql AS $$"
    f" BEGIN IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock({LOCK});"
    " IF i = 2828 THEN BEGIN RETURN 'last ' || lastval()::varchar;"
    " EXCEPTION WHEN others THEN RETURN 'none'; END; END IF; END IF;"
    " RETURN i::varchar; END $$",
    # A view that concatenates a number: its rule depends on pg_catalog's `||`
    # (textanycat), not on the cast, which textanycat's SQL body reaches when it runs.
    "CREATE VIEW public.v28c AS SELECT 'order ' || 42 AS t",
    "GRANT SELECT ON public.v28c TO PUBLIC",
)
TEARDOWN = (
    "DROP VIEW IF EXISTS public.v28c",
    "DROP TABLE IF EXISTS public.s28c",
    "DROP FUNCTION IF EXISTS public.i2t28(int4)",
)


@pytest.fixture(scope="module")
def cast_made(pair: LocalPair) -> Iterator[None]:
    """The owner's function and table, then the cast between two catalog types: the
    superuser's to make (the harness's login)."""
    with pair.primary.connect() as conn:
        conn.execute("DROP CAST IF EXISTS (int4 AS text)")
    as_owner(pair, *SETUP)
    with pair.primary.connect() as conn:
        conn.execute("CREATE CAST (int4 AS text) WITH FUNCTION public.i2t28(int4) AS ASSIGNMENT")
    try:
        yield
    finally:
        with pair.primary.connect() as conn:
            conn.execute("DROP CAST IF EXISTS (int4 AS text)")
        as_owner(pair, *TEARDOWN)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair, cast_made: None) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked_on(pair, (), ()) as client:  # (once it has read the cast)
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def behind(
    pair: LocalPair, work_dir: Path, cast_made: None
) -> AsyncIterator[httpx.AsyncClient]:
    async with behind_one_server_connection(pair, work_dir, (), (), lock=LOCK) as client:
        await schema_seen(client)
        yield client


@pytest.fixture(autouse=True)
def no_lock_left(pair: LocalPair) -> Iterator[None]:
    """Each case starts on a pool with no session holding the lock (a failed case's pooled
    connection keeps it: it is ended, and the pool opens another)."""
    yield
    end_sessions_holding(pair, LOCK)


async def settled(client: httpx.AsyncClient) -> None:
    """The pool past the connection an earlier case's cleanup ended (its replacement open)."""
    await eventually(lambda: _answers(client), "the pool to answer on a fresh connection", 10)


async def _answers(client: httpx.AsyncClient) -> bool:
    return (await query(client, "admin", "SELECT 1")).status_code == 200


@pytest.mark.parametrize(
    "attack",
    [
        "SELECT 42::text AS t",
        "SELECT CAST(42 AS text) AS t",
        "SELECT format('%s', 42::text) AS t",
        # No cast written at all: `||` of text and a number is pg_catalog.textanycat, an SQL
        # function whose body casts its argument (`$2::pg_catalog.text`); quote_literal's
        # does the same, and an array's cast casts each element.
        "SELECT 'order ' || 42 AS t",
        "SELECT quote_literal(42) AS t",
        "SELECT ARRAY[42]::text[] AS t",
        # Stored code too: the view's rule records no dependency on the cast.
        "SELECT t FROM v28c",
    ],
    ids=["colon-colon", "cast", "in-a-call", "concatenation", "quote-literal", "array", "view"],
)
async def test_a_catalog_type_cast_leaves_no_session_lock(
    served: httpx.AsyncClient, pair: LocalPair, attack: str
) -> None:
    """The read key's cast of an int to text runs public.i2t28, which takes a session
    advisory lock; the admin key's next request has the same pooled connection."""
    await settled(served)
    await leaves_no_lock(served, pair, "read", attack, "a cast between catalog types")


async def test_a_catalog_type_cast_reads_no_other_keys_lastval(
    served: httpx.AsyncClient, pair: LocalPair
) -> None:
    """The write key's INSERT takes a serial value (a clean write: its connection goes back
    as it is); the read key's `SELECT 2828::text` runs the cast's function, which reads
    lastval() in that session: the write key's row id."""
    await settled(served)
    r = await query(served, "write", "INSERT INTO s28c (v) VALUES ('order') RETURNING id")
    assert r.status_code == 200, r.text
    (made,) = r.json()["rows"][0]
    seen = await query(served, "read", "SELECT 2828::text AS t")
    assert seen.status_code == 200, seen.text
    assert (await query(served, "admin", "SELECT 1")).status_code == 200
    assert seen.json()["rows"] != [[f"last {made}"]], "the read key read the write key's lastval()"
    assert advisory_locks(pair) == 0, "the cast's session lock outlived the read key's request"


async def test_an_assignment_cast_on_insert_leaves_no_session_lock(
    served: httpx.AsyncClient, pair: LocalPair
) -> None:
    """The write key's INSERT of a number into the text column: the assignment cast runs
    public.i2t28 (the statement names no type at all)."""
    await settled(served)
    await leaves_no_lock(
        served, pair, "write", "INSERT INTO s28c (v) VALUES (7)", "an assignment cast"
    )


async def test_behind_pgbouncer_a_catalog_type_cast_reads_no_other_keys_lastval(
    behind: httpx.AsyncClient,
) -> None:
    """Behind PgBouncer (one server connection, which every request shares) the same: a
    statement that may run code of the database's own starts with DISCARD SEQUENCES, and
    this one is none as far as the facts go. (The session lock is let go by the next
    transaction's opening there, app/sql/pgbouncer.py flushed.)"""
    await settled(behind)
    r = await query(behind, "write", "INSERT INTO s28c (v) VALUES ('order') RETURNING id")
    assert r.status_code == 200, r.text
    (made,) = r.json()["rows"][0]
    seen = await query(behind, "read", "SELECT 2828::text AS t")
    assert seen.status_code == 200, seen.text
    assert seen.json()["rows"] != [[f"last {made}"]], (
        "behind PgBouncer, the read key read the write key's lastval()"
    )
