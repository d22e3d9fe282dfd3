"""Twenty-first review pass (attacker): behind PgBouncer, code of the database's own that a
statement reaches left a session advisory lock, or a custom setting's value, on the shared
server connection, for the next key. Fixed: app/sql/pgbouncer.py undoes what such code may
leave inside the transaction that ran it (clean_up), or with its ROLLBACK in one query
(roll_back).

With sessions of mirrorpool's own, a statement that calls a function of the database's own,
or reads a view (a trigger, a policy, ...) whose code is not proven clean, has its
connection closed after it (app/sql/session.py effect_with: Effect.CLOSE). Behind PgBouncer
that judgement was made (app/sql/execution.py mark), but nothing acted on it, and closing a
client connection to PgBouncer does not end the server session anyway. The parse-tree
refusals of app/sql/transaction_pooling.py read the statement's tree only: a function or a
view that does what the tree would be refused for (`pg_advisory_lock`,
`set_config(..., false)`) was not refused. Every later client of the pooler's server
connection, any key, got it:

    owner:     CREATE FUNCTION own21() ... pg_try_advisory_lock(2121);
               set_config('app.x21', 'evil', false) ...
               CREATE VIEW v21 AS SELECT own21() AS n
    write key: SELECT n FROM v21                    (names only a view)
    admin key: SELECT current_setting('app.x21', true)   -> 'evil' (a session value)
    (and the session advisory lock 2121 stays held by the server connection)

A read key's READ ONLY transaction is rolled back, which undoes the setting's value but not
the advisory lock: a read key alone left the lock to every other client of the server
connection. The same for a failed statement, a /v1/transaction, a stream, and for a LISTEN,
a temporary table and a seeded random() (what DISCARD ALL undoes). Set up: the service's
login, behind a PgBouncer with one server connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import advisory_locks, behind_one_server_connection, headers, query

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETUP = (
    "CREATE OR REPLACE FUNCTION public.own21() RETURNS int LANGUAGE plpgsql AS"
    f" $$ BEGIN IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock(2121);"
    " PERFORM set_config('app.x21', 'evil', false); END IF; RETURN 1; END $$",
    "CREATE OR REPLACE VIEW public.v21 AS SELECT public.own21() AS n",
    "GRANT SELECT ON public.v21 TO PUBLIC",
    # Everything else DISCARD ALL would undo, left by a trigger-like function of the schema's.
    "CREATE OR REPLACE FUNCTION public.more21() RETURNS int LANGUAGE plpgsql AS"
    f" $$ BEGIN IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock(2121);"
    " PERFORM setseed(0.21); EXECUTE 'LISTEN c21';"
    " EXECUTE 'CREATE TEMP TABLE IF NOT EXISTS t21 (x int)'; END IF; RETURN 1; END $$",
    "CREATE OR REPLACE VIEW public.w21 AS SELECT public.more21() AS n",
    "GRANT SELECT ON public.w21 TO PUBLIC",
)
TEARDOWN = (
    "DROP VIEW IF EXISTS public.v21, public.w21",
    "DROP FUNCTION IF EXISTS public.own21(), public.more21()",
)
SETTING = "SELECT coalesce(current_setting('app.x21', true), 'undefined') AS x"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def behind(pair: LocalPair, work_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with behind_one_server_connection(pair, work_dir, SETUP, TEARDOWN, 2121) as client:
        yield client


async def test_a_read_keys_view_leaves_no_session_lock_behind_pgbouncer(
    behind: httpx.AsyncClient, pair: LocalPair
) -> None:
    """A read key's `SELECT n FROM v21`: the view's function takes a session advisory lock,
    which the rollback of the read-only transaction does not release."""
    assert advisory_locks(pair) == 0
    r = await query(behind, "read", "SELECT n FROM v21")
    assert r.status_code == 200, r.text
    assert (await query(behind, "admin", "SELECT 1 AS one")).status_code == 200
    assert advisory_locks(pair) == 0, "the read key's view left a session advisory lock"


async def test_a_write_keys_view_leaves_no_custom_setting_behind_pgbouncer(
    behind: httpx.AsyncClient,
) -> None:
    """A write key's `SELECT n FROM v21`, committed: the function's set_config(..., false)
    stays on the server connection, and the admin key reads it."""
    r = await query(behind, "write", "SELECT n FROM v21")
    assert r.status_code == 200, r.text
    seen = await query(behind, "admin", SETTING)
    assert seen.status_code == 200, seen.text
    assert seen.json()["rows"] != [["evil"]], "the admin key read the write key's app.x21"


async def test_a_failed_statement_after_the_code_ran_leaves_no_lock_behind_pgbouncer(
    behind: httpx.AsyncClient, pair: LocalPair
) -> None:
    """The view's function runs, then the statement fails (a division by zero on its row):
    the rollback and the unlock go in one query, on the same server session."""
    assert advisory_locks(pair) == 0
    for key in ("read", "write"):
        r = await query(behind, key, "SELECT n, 1 / (n - 1) FROM v21")
        assert r.status_code in (400, 409, 422), r.text
        assert r.json()["sqlstate"] == "22012", r.text
        assert (await query(behind, "admin", "SELECT 1 AS one")).status_code == 200
        assert advisory_locks(pair) == 0, f"a failed statement of the {key} key left a lock"


async def test_a_transaction_and_a_stream_leave_nothing_behind_pgbouncer(
    behind: httpx.AsyncClient, pair: LocalPair
) -> None:
    body = {"statements": [{"sql": "SELECT 1 AS one"}, {"sql": "SELECT n FROM v21"}]}
    r = await behind.post("/v1/transaction", json=body, headers=headers("write"))
    assert r.status_code == 200, r.text
    streamed = await behind.post(
        "/v1/query/stream", json={"sql": "SELECT n FROM v21"}, headers=headers("read")
    )
    assert streamed.status_code == 200, streamed.text
    assert '"rows"' in streamed.text or "[1]" in streamed.text, streamed.text
    seen = await query(behind, "admin", SETTING)
    assert seen.json()["rows"] != [["evil"]], seen.text
    assert advisory_locks(pair) == 0, "a transaction or a stream left a session advisory lock"


def seeded_random(pair: LocalPair) -> float:
    """random()'s first value after setseed(0.21): what a session so seeded answers."""
    with pair.primary.connect() as conn:
        conn.execute("SELECT setseed(0.21)")
        row = conn.execute("SELECT random()").fetchone()
    assert row is not None
    return float(row[0])


async def test_what_discard_all_would_undo_is_undone_behind_pgbouncer(
    behind: httpx.AsyncClient, pair: LocalPair
) -> None:
    """A write key's view whose function LISTENs, makes a temporary table, seeds random()
    and takes a session lock: the admin key's next request, on the same server session,
    finds none of it."""
    r = await query(behind, "write", "SELECT n FROM w21")
    assert r.status_code == 200, r.text
    seen = await query(
        behind,
        "admin",
        "SELECT (SELECT count(*)::int FROM pg_listening_channels()) AS listening,"
        " pg_catalog.to_regclass('pg_temp.t21') IS NOT NULL AS temp_table, random() AS r",
    )
    assert seen.status_code == 200, seen.text
    listening, temp_table, drawn = seen.json()["rows"][0]
    assert listening == 0, "the admin key's session listens to the write key's channel"
    assert not temp_table, "the admin key's session has the write key's temporary table"
    assert drawn != seeded_random(pair), "random() goes on from the write key's seed"
    assert advisory_locks(pair) == 0
