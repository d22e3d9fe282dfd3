"""Forty-second review pass (attacker), what held.

- The row-by-row rule of pass 41 (app/sql/tree_nodes.py steady) in spellings that reach a
  varying value without naming a column of the outer query in the call: an array parameter
  indexed by a series, a CASE over a subquery, random() and nextval() under the allowed
  int8(), a window count, GROUPING, XMLEXISTS, a recursive CTE's column, a key's own CHECK
  constraint on a temporary table (which would lock on every INSERTed row): each is
  refused (400, "are taken at most 4 to a statement"), as the whitelist of node types makes
  anything but constants, parameters, casts and operators refuse. No built-in operator
  returning an integer or text runs a volatile function (pg_operator joined to pg_proc:
  only `||`, stable), and the five allowed functions are all immutable in every overload.
- Behind PgBouncer, where the login has no TEMPORARY (test_pass41_pin_refused.py), owner
  code that raises temp_buffers to 32GB, makes 300 temporary tables and then fails: the
  statement's error comes only after the abort has dropped them (3.5-4 s of scans of 4 M
  local buffer descriptors, interrupts held), but the request's deadline shuts the socket
  (A 503 after 2.0-2.1 s of a 1000 ms timeout), PgBouncer lets the server go, the backend
  finishes its abort off the pooler, and B sent then is answered 200 at once. What B can
  wait is bounded by A's deadline, as for any statement that outlives its timeout.
- A configuration reload that changes temp_buffers for every backend (ALTER SYSTEM,
  pg_reload_conf) after a server session's local buffers were pinned: PostgreSQL's check
  refuses the new value in that backend at the reload, so its reset value stays the pinned
  one, the cleanup's set_config of current_setting('temp_buffers') succeeds, and the same
  backend keeps serving (one pid over 6 requests, each 200 within 40 ms); new backends take
  the new value and pin at it.
- Subtransactions that write, one per row, through the owner's "insert unless present"
  function (PL/pgSQL, an EXCEPTION block around an INSERT): 30 000 calls in one statement,
  more than the lock table's room (23 234 advisory locks), hold one transactionid lock in
  all (pg_locks of A's backend: 1 transactionid, 2 relation, 1 virtualxid): a committed
  subtransaction lets go of its own id's lock, so A 200 and another key's write 200.
- Behind PgBouncer, a session advisory lock taken by the owner's SQL function under the
  owner's view (hold42 under held42), read by a read key and a write key, in a statement
  that succeeds and in one that then fails (x / 0: the new roll_back path): no session
  lock is left on the server session after any of them (locks_on 0 each time).
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import (
    attacked_on,
    behind_one_server_connection,
    beside_one_server_connection,
    locks_on,
    query,
)
from tests.attacks.test_pass40_unbounded_drop import SETUP as PAST_SETUP
from tests.attacks.test_pass40_unbounded_drop import TEARDOWN as PAST_TEARDOWN
from tests.attacks.test_pass41_pin_refused import login_without_temp  # noqa: F401 (fixture)
from tests.attacks.test_pass42_large_object_locks import SETUP as ROWS
from tests.attacks.test_pass42_large_object_locks import TEARDOWN as ROWS_TEARDOWN
from tests.attacks.test_pass42_large_object_locks import while_a_holds
from tests.pgbouncer import LocalPgBouncer
from tests.waiting import eventually, eventually_sync

SPELLINGS = (
    (
        "SELECT count(pg_advisory_xact_lock(($1::int8[])[g])) FROM generate_series(1, 3) g",
        [[1, 2, 3]],
    ),
    ("SELECT pg_advisory_xact_lock(CASE WHEN true THEN (SELECT 1::int8) END)", None),
    ("SELECT pg_advisory_xact_lock(int8(random() * 1e9))", None),
    ("SELECT pg_advisory_xact_lock(int8(nextval('orders_id_seq')))", None),
    (
        "SELECT count(pg_advisory_xact_lock(count(*) OVER (ORDER BY g)))"
        " FROM generate_series(1, 3) g",
        None,
    ),
    (
        "SELECT pg_advisory_xact_lock(int4(GROUPING(g)::bool)) FROM generate_series(1, 3) g"
        " GROUP BY g",
        None,
    ),
    (
        "SELECT pg_advisory_xact_lock(int4(xmlexists('//a' PASSING BY REF '<a/>')))",
        None,
    ),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1::int8 UNION ALL SELECT n + 1 FROM r WHERE n < 3)"
        " SELECT count(pg_advisory_xact_lock(n)) FROM r",
        None,
    ),
    ("CREATE TEMP TABLE checked42 (x int8 CHECK (pg_try_advisory_xact_lock(x)))", None),
    (
        "CREATE TEMP VIEW locking42 AS SELECT pg_advisory_xact_lock(g)"
        " FROM generate_series(1::int8, 3) g",
        None,
    ),
)


async def test_row_varying_spellings_are_refused(pair: LocalPair) -> None:
    async with attacked_on(pair, (), ()) as client:
        for sql, params in SPELLINGS:
            extra = {"params": params} if params else {}
            r = await query(client, "write", sql, timeout_ms=1000, **extra)
            assert r.status_code == 400, (sql, r.text)
            assert "are taken at most 4 to a statement" in r.json()["detail"], (sql, r.text)


NOTES = (
    *ROWS,
    "CREATE TABLE notes42 (id int PRIMARY KEY)",
    "CREATE FUNCTION note42(id int) RETURNS void LANGUAGE plpgsql AS"
    " 'BEGIN INSERT INTO notes42 VALUES (id);"
    " EXCEPTION WHEN unique_violation THEN NULL; END'",
    f"GRANT EXECUTE ON FUNCTION note42(int) TO {SERVICE}",
    f"GRANT INSERT ON notes42 TO {SERVICE}",
)
NOTES_TEARDOWN = (
    "DROP FUNCTION IF EXISTS note42(int)",
    "DROP TABLE IF EXISTS notes42",
    *ROWS_TEARDOWN,
)


async def test_subtransactions_on_every_row_hold_no_lock_each(pair: LocalPair) -> None:
    async with attacked_on(pair, NOTES, NOTES_TEARDOWN, pool_max_size=2, pool_min_size=2) as c:
        watcher = await psycopg.AsyncConnection.connect(pair.primary.dsn(), autocommit=True)
        try:
            take = "SELECT count(note42(i)) FROM generate_series(1, 30000) i"
            a, b = await while_a_holds(c, watcher, take)
        finally:
            await watcher.close()
        assert a.status_code == 200, a.text
        assert b.status_code == 200, b.text


SETUP = (
    "CREATE FUNCTION fail42(n int) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$"
    " BEGIN PERFORM pg_catalog.set_config('temp_buffers', '32GB', true);"
    " CREATE TEMP TABLE first42 (x int); INSERT INTO first42 VALUES (1);"
    " FOR i IN 1..n LOOP EXECUTE pg_catalog.format('CREATE TEMP TABLE t42_%s (x int)', i);"
    " END LOOP; RAISE EXCEPTION 'fail42 made %', n; END $$",
    f"GRANT EXECUTE ON FUNCTION fail42(int) TO {SERVICE}",
)
TEARDOWN = ("DROP FUNCTION IF EXISTS fail42(int)",)


@pytest.mark.usefixtures("login_without_temp")
async def test_an_abort_that_drops_tables_at_32gb_holds_the_pooler_until_the_deadline_only(
    pair: LocalPair, work_dir: Path
) -> None:
    async with beside_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as (_, client):
        started = time.monotonic()
        a = await query(client, "write", "SELECT fail42(300)", timeout_ms=1000)
        a_took = time.monotonic() - started
        started = time.monotonic()
        b = await query(client, "read", "SELECT 1", timeout_ms=1000)
        b_took = time.monotonic() - started
        said = f"A {a.status_code} after {a_took:.1f} s; B {b.status_code} after {b_took:.2f} s"
        assert a.status_code >= 400, f"{said}: {a.text}"
        assert a_took < 2.5, said
        assert b.status_code == 200, f"{said}: {b.text}"
        assert b_took < 0.5, said


def server_sessions(bouncer: LocalPgBouncer) -> set[int]:
    """The backend pids of this pooler's server connections for the service's login (SHOW
    SERVERS' remote_pid): not every session of that login, as another test's ended backends
    may still be exiting beside them."""
    servers = bouncer.admin("SHOW SERVERS")
    return {int(str(s["remote_pid"])) for s in servers if s["user"] == SERVICE}


def new_sessions_take(pair: LocalPair, value: str) -> bool:
    with psycopg.connect(pair.primary.dsn()) as conn:
        row = conn.execute("SELECT current_setting('temp_buffers')").fetchone()
    return row is not None and row[0] == value


async def test_a_reload_of_temp_buffers_leaves_pinned_sessions_serving(
    pair: LocalPair, work_dir: Path
) -> None:
    async with beside_one_server_connection(pair, work_dir, PAST_SETUP, PAST_TEARDOWN) as (
        bouncer,
        client,
    ):
        try:
            pinned = await query(client, "write", "SELECT past40(3)", timeout_ms=1000)
            assert pinned.status_code == 200, pinned.text
            before = server_sessions(bouncer)
            assert len(before) == 1, before
            with pair.primary.connect() as conn:
                conn.autocommit = True
                conn.execute("ALTER SYSTEM SET temp_buffers = '16MB'")
                conn.execute("SELECT pg_reload_conf()")
            eventually_sync(lambda: new_sessions_take(pair, "16MB"), "the reload")
            for _round in range(3):
                for key, sql in (("write", "SELECT past40(3)"), ("read", "SELECT 1")):
                    started = time.monotonic()
                    r = await query(client, key, sql, timeout_ms=1000)
                    assert r.status_code == 200, (sql, r.text)
                    assert time.monotonic() - started < 0.5, sql
            assert server_sessions(bouncer) == before
        finally:
            with pair.primary.connect() as conn:
                conn.autocommit = True
                conn.execute("ALTER SYSTEM RESET temp_buffers")
                conn.execute("SELECT pg_reload_conf()")
        await eventually(lambda: new_sessions_take(pair, "8MB"), "the reset", 10)


HOLD = (
    "CREATE FUNCTION hold42() RETURNS int LANGUAGE sql"
    " AS 'SELECT 1 FROM (SELECT pg_advisory_lock(4242)) s'",
    "CREATE VIEW held42 AS SELECT hold42() AS x",
    f"GRANT SELECT ON held42 TO {SERVICE}",
    f"GRANT EXECUTE ON FUNCTION hold42() TO {SERVICE}",
)
HOLD_TEARDOWN = ("DROP VIEW IF EXISTS held42", "DROP FUNCTION IF EXISTS hold42()")


async def test_a_session_lock_under_an_owners_view_goes_after_success_and_failure(
    pair: LocalPair, work_dir: Path
) -> None:
    async with behind_one_server_connection(
        pair, work_dir, HOLD, HOLD_TEARDOWN, lock=4242
    ) as client:
        for sql, status in (
            ("SELECT * FROM held42", 200),
            ("SELECT (SELECT x FROM held42)", 200),
            ("SELECT x / 0 FROM held42", 400),
        ):
            for key in ("read", "write"):
                r = await query(client, key, sql, timeout_ms=1000)
                assert r.status_code == status, (key, sql, r.text)
                assert locks_on(pair, 4242) == 0, (key, sql)
