"""Twenty-third review pass (attacker): behind PgBouncer, a statement prepared by the code of
the database's own outlives a failed transaction on the shared server connection. Pass 22
made `clean_up` deallocate what SQL prepared, and wrote `_AFTER_ROLLBACK` (deallocate, then
DISCARD SEQUENCES) for the failure path, but `roll_back` (app/sql/pgbouncer.py) never runs
it: it sends `ROLLBACK; SELECT pg_advisory_unlock_all(), setseed(..)` only. A ROLLBACK does
not undo a PREPARE. So whenever the transaction fails after own code prepared something, the
prepared statement stays with the server connection for the pooler's next client. Fixed:
roll_back sends `ROLLBACK`, the deallocation, `DISCARD SEQUENCES` and the unlock in one query.

1. The statement fails after the function ran (a division by zero on its result):

       owner:     CREATE FUNCTION prep23(note) ... EXECUTE format('PREPARE %I AS SELECT %L', ..)
       write key: SELECT 1 / (prep23('p23a', 'card 4111 1111') - 1)    -> 400 (22012)
       admin key: SELECT name, statement FROM ps23        (a view of pg_prepared_statements)
                  -> p23a | PREPARE p23a AS SELECT 'card 4111 1111'::text

   A read key's READ ONLY request does the same (PREPARE is allowed in a read-only
   transaction).

2. The cleanup itself made to fail: the code also sets `statement_timeout` to 1 ms for the
   session (set_config(..., false), which clean_up's RESET ALL would undo, but only once it
   runs), and a deferred constraint trigger of the schema's takes a moment at clean_up's
   `SET CONSTRAINTS ALL IMMEDIATE`: the cleanup query is cancelled by its own timeout,
   `roll_back` runs, and the prepared statement stays. (Since pass 33's fix the cleanup
   runs after the end, RESET ALL first, and the transaction commits, leaving nothing.)

What reaches the next key: the SQL text (and the literal values) another key's request had
the code prepare, through a view or function of the schema's; the code's next
`PREPARE p23a` in another key's request fails (42P05); a later key's own code that runs
`EXECUTE p23a` runs another key's statement. Set up: the service's login behind a PgBouncer
with one server connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import behind_one_server_connection, headers, query

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETUP = (
    "DROP TABLE IF EXISTS public.t23d",
    "CREATE OR REPLACE FUNCTION public.prep23(name text, note text) RETURNS int"
    " LANGUAGE plpgsql AS $$ BEGIN"
    " EXECUTE format('PREPARE %I AS SELECT %L::text', name, note); RETURN 1; END $$",
    "CREATE OR REPLACE FUNCTION public.prep23t(name text, note text) RETURNS int"
    " LANGUAGE plpgsql AS $$ BEGIN"
    " EXECUTE format('PREPARE %I AS SELECT %L::text', name, note);"
    " PERFORM set_config('statement_timeout', '1', false); RETURN 1; END $$",
    "CREATE OR REPLACE FUNCTION public.slow23() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$",
    "CREATE TABLE public.t23d (id int)",
    "CREATE CONSTRAINT TRIGGER c23d AFTER INSERT ON public.t23d DEFERRABLE INITIALLY DEFERRED"
    " FOR EACH ROW EXECUTE FUNCTION public.slow23()",
    "CREATE OR REPLACE VIEW public.ps23 AS SELECT name, statement FROM pg_prepared_statements"
    " WHERE from_sql",
    f"GRANT SELECT, INSERT ON public.t23d TO {SERVICE}",
    "GRANT SELECT ON public.ps23 TO PUBLIC",
)
TEARDOWN = (
    "DROP VIEW IF EXISTS public.ps23",
    "DROP TABLE IF EXISTS public.t23d",
    "DROP FUNCTION IF EXISTS public.prep23(text, text), public.prep23t(text, text),"
    " public.slow23()",
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def behind(pair: LocalPair, work_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with behind_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as client:
        yield client


async def prepared(client: httpx.AsyncClient) -> list[list[str]]:
    seen = await query(client, "admin", "SELECT name, statement FROM ps23")
    assert seen.status_code == 200, seen.text
    return [list(row) for row in seen.json()["rows"]]


@pytest.mark.parametrize("key", ["write", "read"])
async def test_a_failed_statement_leaves_no_prepared_statement_behind_pgbouncer(
    behind: httpx.AsyncClient, key: str
) -> None:
    name = f"p23a_{key}"
    r = await query(behind, key, f"SELECT 1 / (prep23('{name}', 'card 4111 1111') - 1) AS n")
    assert r.status_code in (400, 409, 422), r.text
    assert r.json()["sqlstate"] == "22012", r.text
    left = await prepared(behind)
    assert not any(row[0] == name for row in left), f"the admin key lists {left}"


async def test_a_cleanup_timed_out_by_own_code_leaves_no_prepared_statement_behind_pgbouncer(
    behind: httpx.AsyncClient,
) -> None:
    body = {
        "statements": [
            {"sql": "INSERT INTO t23d VALUES (1)"},
            {"sql": "SELECT prep23t('p23b', 'card 5500 0000') AS n"},
        ]
    }
    r = await behind.post("/v1/transaction", json=body, headers=headers("write"))
    # (Since the cleanup runs after the end, in units of its own that RESET ALL first, the
    # code's 1 ms session timeout no longer cuts it short: the transaction commits.)
    assert r.status_code == 200, r.text
    left = await prepared(behind)
    assert not any(row[0] == "p23b" for row in left), f"after {r.text}: the admin key lists {left}"
