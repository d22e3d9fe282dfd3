"""Twenty-seventh review pass (attacker): behind PgBouncer, code of the database's own that
runs at a COMMIT which then fails leaves the statements it PREPAREd (by SQL) on the shared
server connection, where the next client's code of the database's own reads them: another
key's data, or a name taken that its own PREPARE then fails on. Fixed: a transaction whose
statements may run code of the database's own first drops the statements SQL PREPAREd on
the server session (app/sql/transactions.py begin: `deallocate="sql"` behind a pooler).

app/sql/pgbouncer.py `finish` ends a transaction whose statements may have run code with
one query: cleanup, the COMMIT, cleanup again. A deferred constraint trigger of the schema's
that defers its event again (pass 26) runs at that COMMIT, after the first cleanup; when it
fails the COMMIT fails and PostgreSQL skips the rest of the query, the second cleanup with
it. The transaction is then over (the connection is idle), so `roll_back` sends nothing.
Pass 26 judged that what such code leaves "beyond the rollback is harmless to the next
client but a session advisory lock", which `flushed` lets go at every BEGIN. But a ROLLBACK
does not undo PREPARE either: the prepared statement stays in the server session, and the
next transaction's opening behind PgBouncer never drops statements prepared by SQL
(transactions.begin: `deallocate=ctx.options.own_sessions and hidden`; the pooler's own,
prepared by protocol, must stay). Before code of the database's own it only discards the
sequences and reseeds random(); the DO block of _DEALLOCATE_SQL_PREPARED runs only in the
cleanups that the failed COMMIT skipped.

    owner:     CREATE CONSTRAINT TRIGGER c27 AFTER INSERT ON t27 DEFERRABLE INITIALLY
               DEFERRED FOR EACH ROW EXECUTE FUNCTION trig27()
               -- trig27: n > 0: SET CONSTRAINTS ALL DEFERRED; INSERT INTO t27 (n - 1, v)
               --         n = 0: PREPARE chk27 AS SELECT <v>; RAISE when v is a card number
               CREATE VIEW ps27 AS SELECT name, statement FROM pg_prepared_statements
    write key: INSERT INTO t27 VALUES (2, 'card-4242-4242')         -> 400 (refused)
    read key:  SELECT statement FROM ps27
               -> "PREPARE chk27 AS SELECT 'card-4242-4242'::text"

and a request of another key whose own code prepares `chk27` fails ("prepared statement
chk27 already exists").

Root cause: app/sql/pgbouncer.py finish puts the whole undoing after the COMMIT in the same
query as the COMMIT, so a COMMIT that fails skips it, and the only part of it that the next
transaction repeats (flushed: pg_advisory_unlock_all) leaves out statements prepared by SQL.

The safe behaviour: what PREPARE left at a failed COMMIT never reaches the next client.
A query of its own after the failure cannot do it (the transaction is over: the pooler may
already have handed the server connection on), so the opening of every transaction behind
PgBouncer would drop the statements prepared by SQL, as `flushed` lets go of session locks,
or at least before any statement that may run code of the database's own.

Set up: the service's login behind a PgBouncer with one server connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import behind_one_server_connection, query, transaction

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETUP: tuple[str, ...] = (
    "DROP VIEW IF EXISTS public.ps27",
    "DROP TABLE IF EXISTS public.t27",
    "CREATE OR REPLACE FUNCTION public.trig27() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN IF NEW.n > 0 THEN SET CONSTRAINTS ALL DEFERRED;"
    " INSERT INTO public.t27 VALUES (NEW.n - 1, NEW.v);"
    f" ELSIF session_user = '{SERVICE}' THEN"
    " EXECUTE pg_catalog.format('PREPARE chk27 AS SELECT %L::text', NEW.v);"
    " IF NEW.v LIKE 'card-%' THEN RAISE EXCEPTION 'card numbers are refused'; END IF;"
    " EXECUTE 'DEALLOCATE chk27'; END IF; RETURN NULL; END $$",
    "CREATE TABLE public.t27 (n int, v text)",
    "CREATE CONSTRAINT TRIGGER c27 AFTER INSERT ON public.t27 DEFERRABLE INITIALLY DEFERRED"
    " FOR EACH ROW EXECUTE FUNCTION public.trig27()",
    "CREATE VIEW public.ps27 AS SELECT name, statement FROM pg_catalog.pg_prepared_statements"
    " WHERE from_sql",
    # Code of the schema's that prepares a statement of its own by that name.
    "CREATE OR REPLACE FUNCTION public.check27(v text) RETURNS text LANGUAGE plpgsql AS $$"
    " DECLARE r text; BEGIN"
    " EXECUTE pg_catalog.format('PREPARE chk27 AS SELECT %L::text', v);"
    " EXECUTE 'EXECUTE chk27' INTO r; EXECUTE 'DEALLOCATE chk27'; RETURN r; END $$",
    f"GRANT SELECT, INSERT ON public.t27 TO {SERVICE}",
    f"GRANT SELECT ON public.ps27 TO {SERVICE}",
)
TEARDOWN = (
    "DROP VIEW IF EXISTS public.ps27",
    "DROP TABLE IF EXISTS public.t27",
    "DROP FUNCTION IF EXISTS public.trig27()",
    "DROP FUNCTION IF EXISTS public.check27(text)",
)
SECRET = "card-4242-4242"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def behind(pair: LocalPair, work_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with behind_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as client:
        yield client


async def refused_at_commit(client: httpx.AsyncClient, *statements: str) -> None:
    """The write key's request, whose COMMIT's trigger prepared chk27 and then failed."""
    if len(statements) == 1:
        r = await query(client, "write", statements[0])
    else:
        r = await transaction(client, "write", *statements)
    assert r.status_code == 400 and "card numbers are refused" in r.text, r.text


@pytest.mark.parametrize(
    "statements",
    [
        pytest.param((f"INSERT INTO t27 VALUES (2, '{SECRET}')",), id="query"),
        pytest.param(
            (f"INSERT INTO t27 VALUES (1, '{SECRET}')", "SELECT 1 AS one"), id="transaction"
        ),
    ],
)
async def test_a_failed_commit_leaves_no_prepared_statement_for_another_key_behind_pgbouncer(
    behind: httpx.AsyncClient, statements: tuple[str, ...]
) -> None:
    await refused_at_commit(behind, *statements)
    seen = await query(behind, "read", "SELECT name, statement FROM ps27")
    assert seen.status_code == 200, seen.text
    assert SECRET not in seen.text, (
        f"the read key's view listed the write key's statement: {seen.json()['rows']}"
    )


async def test_a_failed_commit_takes_no_name_from_another_keys_code_behind_pgbouncer(
    behind: httpx.AsyncClient,
) -> None:
    """The read key's request runs code that prepares chk27 for itself: it fails while the
    write key's statement by that name is still on the server connection."""
    await refused_at_commit(behind, f"INSERT INTO t27 VALUES (2, '{SECRET}')")
    r = await query(behind, "read", "SELECT check27('mine') AS mine")
    assert r.status_code == 200, f"the read key's own code failed on the write key's name: {r.text}"
    assert r.json()["rows"] == [["mine"]], r.text
