"""Twenty-second review pass (attacker): behind PgBouncer, code of the database's own that
runs at COMMIT, after app/sql/pgbouncer.py clean_up, leaves what it did on the shared server
connection for the next client; and what clean_up does not undo (a prepared statement made
by the code's dynamic SQL, the session's sequence values) reaches another key. Fixed:
clean_up fires the deferred triggers first (SET CONSTRAINTS ALL IMMEDIATE: a trigger that
raises fails the transaction there, and roll_back releases the lock), then also runs DISCARD
SEQUENCES and deallocates what SQL prepared (not the pooler's protocol-level names); a
statement that may run such code starts with DISCARD SEQUENCES.

1. A deferred constraint trigger. `clean_up` runs before the transaction's COMMIT; a
   `CREATE CONSTRAINT TRIGGER ... DEFERRABLE INITIALLY DEFERRED` fires at that COMMIT, after
   the cleanup. A /v1/transaction of two statements keeps what its statements defer (only a
   statement on its own gets SET CONSTRAINTS ALL IMMEDIATE):

       owner:     CREATE CONSTRAINT TRIGGER ... AFTER INSERT ON t22c DEFERRABLE INITIALLY
                  DEFERRED FOR EACH ROW EXECUTE FUNCTION trig22c()
                  -- trig22c: pg_try_advisory_lock(2222); set_config('app.x22', 'evil', false)
       write key: /v1/transaction [INSERT INTO t22c VALUES (1)], [SELECT 1]
       admin key: SELECT current_setting('app.x22', true)      -> 'evil'
       (and the session advisory lock 2222 stays with the server connection)

   And when the deferred trigger then raises, the COMMIT fails with the transaction already
   over (status IDLE): `roll_back` returns at once (it acts only INTRANS / INERROR), so the
   lock the trigger took before raising is not released either.

2. A prepared statement: own code's `EXECUTE 'PREPARE p22 AS ...'` outlives the COMMIT
   (clean_up runs no DEALLOCATE: the pooler's own names are on the server connection too).
   Another key's call of code of the database's own finds it: here a view over
   pg_prepared_statements (what the parse tree refuses by name, a view hides), which shows
   the text another key's request had the function prepare, parameters and all.

3. The session's sequence values: a write key's INSERT into a serial table (nextval in a
   column default is stored code counted clean, app/sql/schema_code.py STORED_CLEAN) leaves
   lastval() on the server connection. DISCARD SEQUENCES runs only before a statement whose
   tree names currval/lastval; a function of the database's own returning lastval() shows
   the read key the id another key's INSERT got.

Set up: the service's login behind a PgBouncer with one server connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import (
    behind_one_server_connection,
    end_sessions_holding,
    headers,
    locks_on,
    query,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOCK = 2222
GUARD = f"IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock({LOCK});"
SETUP = (
    "DROP TABLE IF EXISTS public.t22c, public.t22r, public.s22c",
    "CREATE OR REPLACE FUNCTION public.trig22c() RETURNS trigger LANGUAGE plpgsql AS"
    f" $$ BEGIN {GUARD} PERFORM set_config('app.x22', 'evil', false); END IF;"
    " RETURN NULL; END $$",
    "CREATE OR REPLACE FUNCTION public.raise22c() RETURNS trigger LANGUAGE plpgsql AS"
    f" $$ BEGIN {GUARD} END IF; RAISE EXCEPTION 'deferred no'; END $$",
    "CREATE TABLE public.t22c (id int)",
    "CREATE CONSTRAINT TRIGGER c22c AFTER INSERT ON public.t22c DEFERRABLE INITIALLY DEFERRED"
    " FOR EACH ROW EXECUTE FUNCTION public.trig22c()",
    "CREATE TABLE public.t22r (id int)",
    "CREATE CONSTRAINT TRIGGER c22r AFTER INSERT ON public.t22r DEFERRABLE INITIALLY DEFERRED"
    " FOR EACH ROW EXECUTE FUNCTION public.raise22c()",
    # Prepares what it is handed (a function of the schema's that builds SQL), and a view of
    # the session's prepared statements.
    "CREATE OR REPLACE FUNCTION public.prep22(note text) RETURNS int LANGUAGE plpgsql AS"
    " $$ BEGIN EXECUTE format('PREPARE p22 AS SELECT %L::text', note); RETURN 1; END $$",
    "CREATE OR REPLACE VIEW public.ps22 AS SELECT name, statement FROM pg_prepared_statements",
    "CREATE OR REPLACE FUNCTION public.unprep22() RETURNS int LANGUAGE plpgsql AS"
    " $$ BEGIN IF EXISTS (SELECT FROM pg_prepared_statements WHERE name = 'p22') THEN"
    " DEALLOCATE p22; END IF; RETURN 1; END $$",
    # A serial table, and a function of the schema's that returns lastval().
    "CREATE TABLE public.s22c (id serial PRIMARY KEY, v text)",
    "CREATE OR REPLACE FUNCTION public.last22c() RETURNS bigint LANGUAGE plpgsql AS"
    " $$ BEGIN RETURN lastval(); EXCEPTION WHEN object_not_in_prerequisite_state THEN"
    " RETURN NULL; END $$",
    f"GRANT SELECT, INSERT ON public.t22c, public.t22r, public.s22c TO {SERVICE}",
    f"GRANT USAGE ON SEQUENCE public.s22c_id_seq TO {SERVICE}",
    "GRANT SELECT ON public.ps22 TO PUBLIC",
)
TEARDOWN = (
    "DROP VIEW IF EXISTS public.ps22",
    "DROP TABLE IF EXISTS public.t22c, public.t22r, public.s22c",
    "DROP FUNCTION IF EXISTS public.trig22c(), public.raise22c(), public.prep22(text),"
    " public.unprep22(), public.last22c()",
)
SETTING = "SELECT coalesce(current_setting('app.x22', true), 'undefined') AS x"


def locks(pair: LocalPair) -> int:
    return locks_on(pair, LOCK)


def end_server_sessions(pair: LocalPair) -> None:
    end_sessions_holding(pair, LOCK)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def behind(pair: LocalPair, work_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with behind_one_server_connection(pair, work_dir, SETUP, TEARDOWN, LOCK) as client:
        yield client


@pytest.fixture
def clean_server(pair: LocalPair) -> Iterator[None]:
    yield
    end_server_sessions(pair)


async def transaction(client: httpx.AsyncClient, key: str, *sqls: str) -> httpx.Response:
    body = {"statements": [{"sql": s} for s in sqls]}
    return await client.post("/v1/transaction", json=body, headers=headers(key))


async def test_a_deferred_trigger_at_commit_leaves_nothing_behind_pgbouncer(
    behind: httpx.AsyncClient, pair: LocalPair, clean_server: None
) -> None:
    """A write key's two-statement transaction whose INSERT fires a deferred constraint
    trigger of the schema's at COMMIT, after clean_up: its set_config(..., false) and its
    session advisory lock stay on the server connection for the admin key."""
    assert locks(pair) == 0
    r = await transaction(behind, "write", "INSERT INTO t22c VALUES (1)", "SELECT 1 AS one")
    assert r.status_code == 200, r.text
    seen = await query(behind, "admin", SETTING)
    assert seen.status_code == 200, seen.text
    held = locks(pair)
    assert seen.json()["rows"] != [["evil"]] and held == 0, (
        f"the admin key's server session has app.x22 = {seen.json()['rows']}, {held} lock(s)"
    )


async def test_a_deferred_trigger_that_fails_the_commit_leaves_no_lock_behind_pgbouncer(
    behind: httpx.AsyncClient, pair: LocalPair, clean_server: None
) -> None:
    """The deferred trigger takes the lock, then raises: the COMMIT fails with the
    transaction already over, and roll_back (which acts only in a transaction) runs no
    unlock. The admin key's next request gets the server connection with the lock held."""
    assert locks(pair) == 0
    r = await transaction(behind, "write", "INSERT INTO t22r VALUES (1)", "SELECT 1 AS one")
    assert r.status_code >= 400, r.text
    assert "deferred no" in r.text, r.text
    assert (await query(behind, "admin", "SELECT 1 AS one")).status_code == 200
    assert locks(pair) == 0, "a failed COMMIT left the deferred trigger's session lock"


async def test_own_codes_prepared_statement_reaches_no_other_key_behind_pgbouncer(
    behind: httpx.AsyncClient,
) -> None:
    """A write key's `SELECT prep22('card 4111 1111')`: the function prepares a statement,
    which clean_up does not deallocate; the read key's `SELECT * FROM ps22` lists it."""
    try:
        r = await query(behind, "write", "SELECT prep22('card 4111 1111') AS n")
        assert r.status_code == 200, r.text
        seen = await query(behind, "read", "SELECT name, statement FROM ps22")
        assert seen.status_code == 200, seen.text
        assert seen.json()["rows"] == [], f"the read key sees {seen.json()['rows']}"
    finally:
        await query(behind, "write", "SELECT unprep22() AS n")


async def test_another_keys_lastval_reaches_no_own_code_behind_pgbouncer(
    behind: httpx.AsyncClient,
) -> None:
    """A write key's INSERT into a serial table, then the read key's `SELECT last22c()`."""
    r = await query(behind, "write", "INSERT INTO s22c (v) VALUES ('x') RETURNING id")
    assert r.status_code == 200, r.text
    (made,) = r.json()["rows"][0]
    seen = await query(behind, "read", "SELECT last22c()::int AS last")
    assert seen.status_code == 200, seen.text
    assert seen.json()["rows"] != [[made]], "the read key read the write key's lastval()"
