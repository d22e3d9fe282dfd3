"""Thirty-first review pass (attacker): behind PgBouncer, code of the database's own that
runs at the COMMIT ran with none of the request's limits on the server (fixed: the cleanup
before the COMMIT resets no setting; the one after it does):
`pgbouncer.finish`'s cleanup inside the transaction starts with RESET ALL, which undoes the
transaction's SET LOCAL lock_timeout and client_connection_check_interval before the
COMMIT. A backend whose request was answered long ago runs on, in its transaction, holding
its locks, on one of the pooler's few server connections, and may still commit.

app/sql/pgbouncer.py `finish` sends, in one query, `SET CONSTRAINTS ALL IMMEDIATE; RESET
ALL; ...; COMMIT; RESET ALL; ...` (as it then did: a cleanup before the end, and a reset after
it; the whole cleanup has since moved after the end, in units of its own). Behind PgBouncer
the request's limits exist only as SET LOCAL of its BEGIN (transactions.begin_sql), among them
lock_timeout and client_connection_check_interval, which is what stops a backend whose
client went away (pass 9: mirrorpool's deadline shuts its socket to the pooler, not to the
server; the cancel request it sends did not stop this one either). PostgreSQL lifts the
statement timeout for a commit's work in any case, so at a COMMIT those two are all that
bound it. RESET ALL inside the transaction sets them back to the server's defaults (no lock
timeout, no check of the client) for the rest of it. A deferred constraint trigger that
defers its next event again (pass 26) fires at that COMMIT, after the RESET ALL, so what it
runs has no bound at all:

    owner:     CREATE CONSTRAINT TRIGGER c31 AFTER INSERT ON t31 DEFERRABLE INITIALLY
               DEFERRED FOR EACH ROW EXECUTE FUNCTION trig31()
               -- trig31: n > 0: SET CONSTRAINTS ALL DEFERRED; INSERT INTO t31 (n - 1)
               --         n = 0: a long wait (here pg_sleep(15); as well a lock wait, which
               --                without lock_timeout lasts as long as the lock is held)
    write key: INSERT INTO t31 VALUES (2)   with timeout_ms = 300      -> 503 (outcome unknown)
    server:    the backend runs on for the whole wait (15 s), in its transaction, holding
               its locks (the row's, the table's), and then COMMITs.

The same wait before the cleanup's RESET ALL (in the INSERT itself, or fired by the
cleanup's SET CONSTRAINTS ALL IMMEDIATE) stops within seconds (test_pass31_tried.py).

Root cause: app/sql/pgbouncer.py's cleanup before the end (as it then was) ran RESET ALL before the
transaction's end, which resets the limits the transaction set LOCAL in its opening
(transactions.begin / begin_sql), while code of the database's own still runs at
the COMMIT.

The safe behaviour: the limits hold until the transaction has ended: the cleanup before
the COMMIT resets every setting but them (or sets them LOCAL again after its RESET ALL), so
the COMMIT's code fails at the lock timeout, and a backend whose client went away stops
within client_connection_check_interval.

Set up: the service's login behind a PgBouncer with one server connection.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import behind_one_server_connection, end_sleepers, query, sleepers

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETUP: tuple[str, ...] = (
    "DROP TABLE IF EXISTS public.t31",
    "CREATE OR REPLACE FUNCTION public.trig31() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN IF NEW.n > 0 THEN SET CONSTRAINTS ALL DEFERRED;"
    " INSERT INTO public.t31 VALUES (NEW.n - 1);"
    f" ELSIF session_user = '{SERVICE}' THEN PERFORM pg_sleep(15); END IF;"
    " RETURN NULL; END $$",
    "CREATE TABLE public.t31 (n int)",
    "CREATE CONSTRAINT TRIGGER c31 AFTER INSERT ON public.t31 DEFERRABLE INITIALLY DEFERRED"
    " FOR EACH ROW EXECUTE FUNCTION public.trig31()",
    f"GRANT SELECT, INSERT ON public.t31 TO {SERVICE}",
)
TEARDOWN = (
    "DROP TABLE IF EXISTS public.t31",
    "DROP FUNCTION IF EXISTS public.trig31()",
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def behind(pair: LocalPair, work_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with behind_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as client:
        try:
            yield client
        finally:
            end_sleepers(pair)  # (the table's DROP would wait for them)


async def test_code_at_the_commit_keeps_the_requests_deadline_behind_pgbouncer(
    behind: httpx.AsyncClient, pair: LocalPair
) -> None:
    started = time.monotonic()
    r = await query(behind, "write", "INSERT INTO t31 VALUES (2)", timeout_ms=300)
    assert r.status_code in (400, 503, 504), r.text
    gone_by = time.monotonic() + 4
    while sleepers(pair) and time.monotonic() < gone_by:
        await behind.get("/health/live")
    left = sleepers(pair)
    assert left == 0, (
        f"the trigger's code still runs on the server {time.monotonic() - started:.1f} s after"
        f" the request's {r.status_code} (timeout_ms 300): its COMMIT had no limits"
    )
