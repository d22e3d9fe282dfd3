"""Pass 41: one key's transaction fills the server's shared lock table with transaction-level
advisory locks, the very function transaction_pooling.py offers instead of a session lock;
while it holds them every other key's write fails with "out of shared memory".

    key A:  /v1/transaction, timeout_ms 5000:
              SELECT count(pg_advisory_xact_lock(i)) FROM generate_series(1, L) i
              SELECT pg_sleep(2)
            (L: as many locks as the server's lock table takes, 23 235 here, which A can
            find by trying: a try over it fails for A alone and holds nothing)
                -> 200
    key B:  INSERT INTO rows41 VALUES (1), timeout_ms 1000, while A sleeps (another key,
            another pooled connection)
                -> 503 "out of shared memory" (sqlstate 53200, HINT: You might need to
                   increase max_locks_per_transaction), instead of 200; 3 runs of 3
    and:    a new connection to the server meanwhile fails: "FATAL: out of shared memory"
            (so would mirrorpool's pool, a health probe's, any client's); a monitoring
            query on pg_stat_activity fails with 53200 too

Root cause: PostgreSQL's lock table is one shared hash for every session, sized
max_locks_per_transaction x (max_connections + ...) entries plus whatever shared memory is
left, with no bound per transaction: a transaction may take every entry. An advisory lock
(a LOCKTAG_ADVISORY, never on the fast path) takes one for each key value, at about a
microsecond each, so one statement fills the table; any other session's lock that needs an
entry (a write's transaction id lock, a relation lock off the fast path) then fails with
53200 until that transaction ends. mirrorpool lets every key call pg_advisory_xact_lock (and
its try and shared forms) on as many values as it likes, on its own sessions and behind
PgBouncer alike.

Fixed (app/sql/refusals.py, from the tree: app/sql/tree_nodes.py steady): a statement may
call the advisory lock functions at most 4 times, each on a value that is the same on every
row (constants, parameters, hashtext() of them), so one transaction of 100 statements locks
400 values at most. A's statement is refused (400) in every spelling below, and B's write
goes through; `pg_advisory_xact_lock(hashtext($1))` and its kin still lock.
"""

from __future__ import annotations

import asyncio

import psycopg

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, query, transaction
from tests.waiting import eventually

SETUP = ("CREATE TABLE rows41 (x int)", f"GRANT INSERT ON rows41 TO {SERVICE}")
TEARDOWN = ("DROP TABLE IF EXISTS rows41",)
TAKE = "SELECT count(pg_advisory_xact_lock(i)) FROM generate_series(1, {n}) i"


def lock_table_room(pair: LocalPair) -> int:
    """About how many advisory locks one transaction can take now (what A finds by trying)."""
    low, high = 1000, 200_000
    with psycopg.connect(pair.primary.dsn()) as conn:
        while high - low > 1:
            middle = (low + high) // 2
            try:
                conn.execute(TAKE.format(n=middle))
                low = middle
            except psycopg.errors.OutOfMemory:
                high = middle
            conn.rollback()
    return low


SLEEPING = "SELECT 1 FROM pg_stat_activity WHERE usename = %s AND wait_event = 'PgSleep'"


# The same attack in several spellings: each would take a lock for every row.
SPELLINGS = (
    TAKE,
    'SELECT count("pg_advisory_xact_lock"(i)) FROM generate_series(1, {n}) i',
    'SELECT count(U&"pg\\005fadvisory_xact_lock"(i)) FROM generate_series(1, {n}) i',
    "SELECT count(pg_catalog.pg_try_advisory_xact_lock_shared(i)) /* c */"
    " FROM generate_series(1, {n}) i",
    "SELECT count((i).pg_advisory_xact_lock) FROM generate_series(1::int8, {n}) i",
    "SELECT pg_advisory_xact_lock(generate_series(1, {n}))",
    "SELECT pg_advisory_xact_lock(hashtext(random()::text)) FROM generate_series(1, {n})",
    "SELECT pg_advisory_lock(1), pg_advisory_lock(2), pg_advisory_lock(3),"
    " pg_advisory_lock(4), pg_advisory_lock(5)",
)


async def test_one_keys_advisory_locks_fill_the_lock_table_for_every_key(
    pair: LocalPair,
) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN, pool_max_size=2, pool_min_size=2) as client:
        room = lock_table_room(pair)  # (what the server's lock table takes, from the harness)
        for spelling in SPELLINGS:
            sql = spelling.format(n=room)
            a = await transaction(client, "write", sql, "SELECT pg_sleep(0.1)", timeout_ms=5000)
            assert a.status_code == 400, (sql, a.text)
            assert "lo_unlink() are taken at most" in a.json()["detail"], (sql, a.text)
            b = await query(client, "admin", "INSERT INTO rows41 VALUES (1)", timeout_ms=1000)
            assert b.status_code == 200, (sql, b.text)
        other = await psycopg.AsyncConnection.connect(pair.primary.dsn())
        await other.close()


async def test_a_lock_on_one_value_still_locks(pair: LocalPair) -> None:
    """The idioms keep working, and their locks hold while the statement runs."""
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        watcher = await psycopg.AsyncConnection.connect(pair.primary.dsn(), autocommit=True)
        try:
            for sql, params in (
                ("SELECT pg_advisory_xact_lock(hashtext($1)), pg_sleep(0.5)", ["job:41"]),
                ("SELECT pg_catalog.pg_advisory_xact_lock($1::int8), pg_sleep(0.5)", [41]),
            ):
                a_task = asyncio.ensure_future(
                    query(client, "write", sql, params=params, timeout_ms=5000)
                )

                async def held() -> bool:
                    cur = await watcher.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                        " AND granted AND pid <> pg_backend_pid()"
                    )
                    row = await cur.fetchone()
                    return row is not None and row[0] > 0

                await eventually(held, "A to hold its lock", 10, 0.01)
                a = await a_task
                assert a.status_code == 200, (sql, a.text)
        finally:
            await watcher.close()
