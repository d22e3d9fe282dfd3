"""Twenty-sixth review pass (attacker): behind PgBouncer, a deferred trigger that defers
again outlived app/sql/pgbouncer.py clean_up: what it did at COMMIT stayed on the shared
server connection for the next client. Fixed: the cleanup runs both before and after the
transaction's end, in the one query that ends it (pgbouncer.finish), and every transaction
lets go of session advisory locks first (a COMMIT that fails skips the rest of its query).

Pass 22's fix makes clean_up start with SET CONSTRAINTS ALL IMMEDIATE, which fires the
deferred constraint triggers still pending, so that their code runs before the rest of the
cleanup undoes what it left (RESET ALL, ..., pg_advisory_unlock_all()). But the code those
triggers run may itself defer what it queues: a trigger function of the schema's that runs
`SET CONSTRAINTS ALL DEFERRED` (allowed in a function) and then writes a row of a table with
a deferred constraint trigger queues an event that SET CONSTRAINTS ALL IMMEDIATE does not
fire (its loop fires only what is immediate once the trigger has run). That event fires at
the COMMIT, after the whole cleanup:

    owner:     CREATE CONSTRAINT TRIGGER c26d AFTER INSERT ON t26d DEFERRABLE INITIALLY
               DEFERRED FOR EACH ROW EXECUTE FUNCTION trig26d()
               -- trig26d: n > 0: SET CONSTRAINTS ALL DEFERRED; INSERT INTO t26d (n - 1)
               --          n = 0: pg_try_advisory_lock(2626); set_config('app.x26', 'evil',
               --                 false)
    write key: INSERT INTO t26d VALUES (2)    (POST /v1/query, or a /v1/transaction)
    admin key: SELECT current_setting('app.x26', true)      -> 'evil'
    (and the session advisory lock 2626 stays with the server connection)

(n = 2 on /v1/query: its BEGIN sets the constraints immediate, so the first row's trigger
fires in the INSERT and defers the second; the cleanup, then before the end, fired the
second, which defers the third; the COMMIT fires the third.)

Root cause: app/sql/pgbouncer.py's cleanup before the end (as it then was; it now runs after
the end, in units of its own) assumed that once SET CONSTRAINTS ALL IMMEDIATE
has run nothing is left for the COMMIT, but code it fires can defer its own events again;
the cleanup then runs before code that still runs in the transaction. The safe behaviour:
nothing of the database's own runs after the cleanup, or the cleanup runs after it (e.g.
fire the pending deferred triggers until none is left and refuse, roll back, when code
defers anew; or undo at the start of the next transaction on that server connection, as
well: the cleanup's unlock and reset before any statement of a request whose checkout may
follow code).

Set up: the service's login behind a PgBouncer with one server connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

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

LOCK = 2626
SETUP: tuple[str, ...] = (
    "DROP TABLE IF EXISTS public.t26d",
    "CREATE OR REPLACE FUNCTION public.trig26d() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN IF NEW.n > 0 THEN SET CONSTRAINTS ALL DEFERRED;"
    " INSERT INTO public.t26d VALUES (NEW.n - 1);"
    f" ELSIF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock({LOCK});"
    " PERFORM set_config('app.x26', 'evil', false); END IF; RETURN NULL; END $$",
    "CREATE TABLE public.t26d (n int)",
    "CREATE CONSTRAINT TRIGGER c26d AFTER INSERT ON public.t26d DEFERRABLE INITIALLY DEFERRED"
    " FOR EACH ROW EXECUTE FUNCTION public.trig26d()",
    f"GRANT SELECT, INSERT ON public.t26d TO {SERVICE}",
)
TEARDOWN = (
    "DROP TABLE IF EXISTS public.t26d",
    "DROP FUNCTION IF EXISTS public.trig26d()",
    "DROP TABLE IF EXISTS public.t26f",
    "DROP FUNCTION IF EXISTS public.trig26f()",
)
# The same chain, whose last trigger takes the lock and then fails: the COMMIT fails, and
# nothing after it in its query runs.
SETUP += (
    "DROP TABLE IF EXISTS public.t26f",
    "CREATE OR REPLACE FUNCTION public.trig26f() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN IF NEW.n > 0 THEN SET CONSTRAINTS ALL DEFERRED;"
    " INSERT INTO public.t26f VALUES (NEW.n - 1);"
    f" ELSIF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock({LOCK});"
    " PERFORM set_config('app.x26', 'evil', false); RAISE EXCEPTION 'late'; END IF;"
    " RETURN NULL; END $$",
    "CREATE TABLE public.t26f (n int)",
    "CREATE CONSTRAINT TRIGGER c26f AFTER INSERT ON public.t26f DEFERRABLE INITIALLY DEFERRED"
    " FOR EACH ROW EXECUTE FUNCTION public.trig26f()",
    f"GRANT SELECT, INSERT ON public.t26f TO {SERVICE}",
)
SETTING = "SELECT coalesce(current_setting('app.x26', true), 'undefined') AS x"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def behind(pair: LocalPair, work_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with behind_one_server_connection(pair, work_dir, SETUP, TEARDOWN, LOCK) as client:
        yield client


@pytest.fixture
def clean_server(pair: LocalPair) -> Iterator[None]:
    yield
    end_sessions_holding(pair, LOCK)


async def left_behind(client: httpx.AsyncClient, pair: LocalPair) -> tuple[list[list[str]], int]:
    """The session locks on LOCK once the request is over (before any other request's
    transaction starts: each lets go of such locks first), and what the admin key's next
    request finds on the server connection: the setting's value."""
    held = locks_on(pair, LOCK)
    seen = await query(client, "admin", SETTING)
    assert seen.status_code == 200, seen.text
    return seen.json()["rows"], held


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/query", {"sql": "INSERT INTO t26d VALUES (2)"}, id="query"),
        pytest.param(
            "/v1/transaction",
            {"statements": [{"sql": "INSERT INTO t26d VALUES (1)"}, {"sql": "SELECT 1 AS one"}]},
            id="transaction",
        ),
    ],
)
async def test_a_trigger_deferring_again_leaves_nothing_behind_pgbouncer(
    behind: httpx.AsyncClient, pair: LocalPair, clean_server: None, path: str, body: dict[str, Any]
) -> None:
    assert locks_on(pair, LOCK) == 0
    r = await behind.post(path, json=body, headers=headers("write"))
    assert r.status_code == 200, r.text
    rows, held = await left_behind(behind, pair)
    assert rows != [["evil"]] and held == 0, (
        f"after clean_up, the COMMIT's trigger left app.x26 = {rows} and {held} lock(s)"
    )


async def test_a_trigger_failing_at_commit_leaves_no_lock_for_the_next_request_behind_pgbouncer(
    behind: httpx.AsyncClient, pair: LocalPair, clean_server: None
) -> None:
    """The COMMIT fails after the chain's last trigger took a session lock: its setting is
    rolled back, and the next request's transaction lets the lock go before its first
    statement."""
    assert locks_on(pair, LOCK) == 0
    r = await query(behind, "write", "INSERT INTO t26f VALUES (2)")
    assert r.status_code == 400 and "late" in r.text, r.text
    seen = await query(behind, "admin", SETTING)
    assert seen.status_code == 200 and seen.json()["rows"] != [["evil"]], seen.text
    assert locks_on(pair, LOCK) == 0
