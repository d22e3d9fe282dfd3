"""Thirty-second review pass (attacker): what was tried and held.
(The hole of this pass: test_pass32_neon_empty_results_507.py, a 507 after the COMMIT when
empty results or field descriptions overdraw the allowance.)

- random() drawn by stored code a write reaches without naming the table that holds it
  (SchemaCode.write_random, reseeded by app/sql/traces.py of): a read key cracks the
  generator's state through a view over random() (pass 24's `crack`), foresees the next
  value, and a write key's row then takes a DEFAULT random() through
  - an auto-updatable view over the table (the view's 'v' edge makes it written too);
  - a partitioned table whose partitions hold the default (the partition's write edge);
  - INSERT ... ON CONFLICT DO UPDATE SET code = DEFAULT (the target is written);
  - MERGE ... WHEN NOT MATCHED THEN INSERT (MergeStmt is among the writes);
  none took the foreseen value.
- A deferred constraint trigger of the owner's that lifts its own limits at the COMMIT
  (set_config('client_connection_check_interval', '0', true), set_config('lock_timeout',
  '0', true), after SET CONSTRAINTS ALL DEFERRED re-defers its next event past pass 26's
  cleanup) and then sleeps 8 s, fired by a write key's INSERT with timeout_ms 300:
  - on sessions of our own (a single write, and a /v1/transaction whose COMMIT fires it),
    the guard's cancel and app/cluster/backends.py's pg_terminate_backend end the backend
    within a few seconds (at a COMMIT, PostgreSQL's deferred triggers run with interrupts
    allowed: a cancel gives 57014, a terminate 57P01);
  - behind PgBouncer, the wait fired in the INSERT itself, or in a /v1/transaction by the
    cleanup's SET CONSTRAINTS ALL IMMEDIATE (which fires the re-deferred events as well),
    stops at the statement timeout.
  (Behind PgBouncer at the COMMIT it runs on: test_pass32_pgbouncer_cancel_after_close.py.
  Checked here with a client of the PgBouncer: a cancel sent before the socket is shut
  stops the COMMIT's wait, one sent after does not.)
  Note: with the harness polling pg_stat_activity synchronously on the service's event
  loop (as pass 31's tests do), the own-session case once ran on for 4 s ("cancel request
  failed: wait timeout expired", and no terminate in time): the loop was starved by the
  test itself, so the polling here runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import (
    attacked_on,
    behind_one_server_connection,
    beside_one_server_connection,
    end_sleepers,
    query,
    sleepers,
    transaction,
)
from tests.attacks.test_pass24_random_state import as_random, crack, high_bits, step

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETUP = (
    "DROP VIEW IF EXISTS public.r32v, public.r32cv",
    "DROP TABLE IF EXISTS public.r32c, public.r32p",
    "CREATE VIEW public.r32v AS SELECT random() AS r FROM generate_series(1, 4) AS g(i)",
    "CREATE TABLE public.r32c (id int PRIMARY KEY, code float8 DEFAULT random())",
    "CREATE VIEW public.r32cv AS SELECT id, code FROM public.r32c",
    "CREATE TABLE public.r32p (id int, code float8 DEFAULT random()) PARTITION BY RANGE (id)",
    "CREATE TABLE public.r32p1 PARTITION OF public.r32p FOR VALUES FROM (0) TO (100000)",
    "INSERT INTO public.r32c VALUES (-1, 0)",
    "GRANT SELECT ON public.r32v TO PUBLIC",
    "GRANT SELECT, INSERT, UPDATE ON public.r32c, public.r32cv, public.r32p TO PUBLIC",
)
TEARDOWN = (
    "DROP VIEW IF EXISTS public.r32v, public.r32cv",
    "DROP TABLE IF EXISTS public.r32c, public.r32p",
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        yield client


async def foreseen(client: httpx.AsyncClient) -> float:
    """The next random() value, as the read key computes it after reading the view."""
    r = await query(client, "read", "SELECT r FROM r32v")
    assert r.status_code == 200, r.text
    s0, s1 = crack([high_bits(float(row[0])) for row in r.json()["rows"]])
    for _ in range(4):
        _, s0, s1 = step(s0, s1)
    return as_random(step(s0, s1)[0])


@pytest.mark.parametrize(
    "write",
    [
        "INSERT INTO r32cv (id) VALUES ({n}) RETURNING code",
        "INSERT INTO r32p (id) VALUES ({n}) RETURNING code",
        "INSERT INTO r32c (id, code) VALUES (-1, 0) ON CONFLICT (id) DO UPDATE SET code = DEFAULT"
        " RETURNING code",
        "MERGE INTO r32c t USING (SELECT {n} AS id) s ON t.id = s.id"
        " WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)",
    ],
    ids=["updatable-view", "partition-via-parent", "on-conflict-default", "merge"],
)
async def test_a_default_random_reached_unnamed_is_not_foreseen(
    served: httpx.AsyncClient, write: str
) -> None:
    n = time.monotonic_ns() % 100000
    guess = await foreseen(served)
    r = await query(served, "write", write.format(n=n))
    assert r.status_code == 200, r.text
    if "MERGE" in write:
        r = await query(served, "admin", f"SELECT code FROM r32c WHERE id = {n}")
    code = float(r.json()["rows"][0][0])
    assert code != 0
    assert code != guess, (
        f"a read key foresaw the random() default another key's write took: {write}"
    )


COMMIT_SETUP: tuple[str, ...] = (
    "DROP TABLE IF EXISTS public.t32",
    "CREATE OR REPLACE FUNCTION public.trig32() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN IF NEW.n > 0 THEN SET CONSTRAINTS ALL DEFERRED;"
    " INSERT INTO public.t32 VALUES (NEW.n - 1);"
    f" ELSIF session_user = '{SERVICE}' THEN"
    " PERFORM set_config('client_connection_check_interval', '0', true);"
    " PERFORM set_config('lock_timeout', '0', true);"
    " PERFORM set_config('statement_timeout', '0', true);"
    " PERFORM pg_sleep(8); END IF;"
    " RETURN NULL; END $$",
    "CREATE TABLE public.t32 (n int)",
    "CREATE CONSTRAINT TRIGGER c32 AFTER INSERT ON public.t32 DEFERRABLE INITIALLY DEFERRED"
    " FOR EACH ROW EXECUTE FUNCTION public.trig32()",
    f"GRANT SELECT, INSERT ON public.t32 TO {SERVICE}",
)
COMMIT_TEARDOWN = (
    "DROP TABLE IF EXISTS public.t32",
    "DROP FUNCTION IF EXISTS public.trig32()",
)


async def outlived_by(client: httpx.AsyncClient, pair: LocalPair, write: str) -> float:
    """How long after its answer the trigger's wait still ran (0: gone within 4 s)."""
    if write.startswith("INSERT"):
        r = await query(client, "write", write, timeout_ms=300)
    else:
        r = await transaction(client, "write", *write.split("; "), timeout_ms=300)
    answered = time.monotonic()
    assert r.status_code in (400, 503, 504), r.text
    for _ in range(40):  # (polled in a thread: the service shares this event loop)
        if not await asyncio.to_thread(sleepers, pair) or time.monotonic() > answered + 4:
            break
        await asyncio.sleep(0.1)
    return time.monotonic() - answered if sleepers(pair) else 0.0


WRITES = [
    "INSERT INTO t32 VALUES (0)",
    "INSERT INTO t32 VALUES (2)",
    "INSERT INTO t32 VALUES (2); SELECT 1 AS one",
]
WRITE_IDS = ["in-the-write", "re-deferred-to-commit", "transaction-re-deferred"]


@pytest.mark.parametrize("write", WRITES, ids=WRITE_IDS)
async def test_code_that_lifts_its_limits_at_commit_is_ended_on_own_sessions(
    pair: LocalPair, write: str
) -> None:
    async with attacked_on(pair, COMMIT_SETUP, COMMIT_TEARDOWN) as client:
        try:
            left = await outlived_by(client, pair, write)
        finally:
            end_sleepers(pair)
        assert left == 0, f"the trigger's wait ran on {left:.1f} s after the answer"


@pytest.mark.parametrize("write", [WRITES[0], WRITES[2]], ids=[WRITE_IDS[0], WRITE_IDS[2]])
async def test_behind_pgbouncer_the_wait_before_the_commit_stops(
    pair: LocalPair, work_dir: Path, write: str
) -> None:
    """(fired in the INSERT itself, or by the cleanup's SET CONSTRAINTS ALL IMMEDIATE, whose
    firing runs the re-deferred events too: the request's statement timeout stops it)"""
    async with behind_one_server_connection(pair, work_dir, COMMIT_SETUP, COMMIT_TEARDOWN) as c:
        try:
            left = await outlived_by(c, pair, write)
        finally:
            end_sleepers(pair)
        assert left == 0, f"the trigger's wait ran on {left:.1f} s after the answer"


def commit_through(pair: LocalPair, dsn: str, cancel_first: bool) -> str:
    """A client of the PgBouncer runs the re-deferring write, and 0.5 s in ends it as
    mirrorpool's Backends.end does (shut the socket, then send the cancel) or the other way
    round: whether the backend still sleeps 1.5 s later."""
    conn = psycopg.connect(dsn, autocommit=True)
    cancel = conn.pgconn.get_cancel()
    sock = socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM)

    def stop() -> None:
        if cancel_first:
            cancel.cancel()
        sock.shutdown(socket.SHUT_RDWR)
        if not cancel_first:
            time.sleep(0.05)
            cancel.cancel()

    timer = threading.Timer(0.5, stop)
    timer.start()
    try:
        with contextlib.suppress(psycopg.Error):
            conn.execute("BEGIN; INSERT INTO t32 VALUES (2); COMMIT")
    finally:
        timer.join()
        sock.close()
        conn.close()
    time.sleep(1.5)
    try:
        return "sleeps on" if sleepers(pair) else "stopped"
    finally:
        end_sleepers(pair)


@pytest.mark.parametrize(("cancel_first", "ends"), [(True, "stopped"), (False, "sleeps on")])
async def test_behind_pgbouncer_only_a_cancel_before_the_close_reaches_the_commit(
    pair: LocalPair, work_dir: Path, cancel_first: bool, ends: str
) -> None:
    """What the hole of this pass rests on: PgBouncer forwards a cancel to the server only
    while its client is still there."""
    async with beside_one_server_connection(pair, work_dir, COMMIT_SETUP, COMMIT_TEARDOWN) as (
        bouncer,
        _,
    ):
        dsn = bouncer.dsn("postgres", user=SERVICE)
        assert await asyncio.to_thread(commit_through, pair, dsn, cancel_first) == ends
