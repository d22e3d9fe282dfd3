"""Pass 42: pass 41's lock-table hole, without an advisory lock. One key's statement creates
and unlinks a large object per row; each lo_unlink takes an AccessExclusiveLock on its large
object (a LOCKTAG_OBJECT, never on the fast path), held to the end of the transaction, so
one statement fills the server's shared lock table and every other key's write fails with
"out of shared memory" while the transaction lasts.

    key A:  /v1/transaction, timeout_ms 6000:
              SELECT count(lo_unlink(lo_create(0))) FROM generate_series(1, L)
              SELECT pg_sleep(1.5)
            (L: what the lock table takes less a few, 23 222 here; A can find it by trying,
            a try over it fails for A alone and holds nothing; the statement takes
            0.9-1.1 s, about 45 us a large object)
                -> 200, A holds 23 222 object locks
    key B:  INSERT INTO rows42 (x) VALUES (1), timeout_ms 1000, while A sleeps (another
            key, another pooled connection; rows42 has 30 indexes, so the write locks 31
            relations, 15 of them past its 16 fast-path slots)
                -> 503 "out of shared memory" (sqlstate 53200, HINT: You might need to
                   increase max_locks_per_transaction), instead of 200; 3 runs of 3
    (scratch runs: L = 23 222 and 23 219, B 503; 23 210 and below leave B room, B 200.)

Behind PgBouncer (two server connections, two pooled connections to the pooler): the same,
B 503 "out of shared memory"; 3 runs of 3.

Root cause: the refusal of pass 41 (app/sql/refusals.py, app/sql/tree_nodes.py steady)
bounds the advisory lock functions only, but they are not the only ones that take a lock on
a value the caller picks, row by row: lo_unlink goes through inv_drop -> performDeletion,
whose AcquireDeletionLock locks the large object (class pg_largeobject, its oid) until the
transaction ends. Large objects are refused in read-only requests only
(catalog.READ_ONLY_REFUSED and its lo_ prefix), so any write key may call lo_create and
lo_unlink on as many rows as it likes, and PostgreSQL bounds no transaction's share of the
lock table. lo_unlink is the cheapest way found, not the only one, so refusing it alone
would not close the hole: a key's CREATE TEMP TABLE of 1 600 serial columns takes 1 601
entries (its sequences, AccessExclusiveLock each, 1.4 s a statement); in one
/v1/transaction (timeout_ms 40000) 14 of them hold 22 414 entries, and the 15th overflowed
the table 10 s in (A's own 503 there, one run; not a test: it takes more than 15 s).

Fixed (app/sql/catalog.py VALUE_LOCKS): lo_unlink() is held to the advisory locks' rule:
at most 4 to a statement, each on a value that is the same on every row. A's statement is
refused (400), B's write goes through, on mirrorpool's own sessions and behind PgBouncer.
What it leaves: a temporary table of 1 600 serial columns per statement (own sessions only;
more than 15 s to fill the table), and locks the owner's code takes (test_pass42_owner_lock_
function.py, kept off main).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, behind_pgbouncer, query, transaction
from tests.attacks.test_pass41_lock_table import lock_table_room
from tests.waiting import eventually

INDEXED = range(30)
SETUP = (
    "CREATE TABLE rows42 (x int, " + ", ".join(f"c{i} int" for i in INDEXED) + ")",
    *(f"CREATE INDEX ON rows42 (c{i})" for i in INDEXED),
    f"GRANT INSERT ON rows42 TO {SERVICE}",
)
TEARDOWN = ("DROP TABLE IF EXISTS rows42",)
SLEEPING = "SELECT 1 FROM pg_stat_activity WHERE usename = %s AND wait_event = 'PgSleep'"
TAKE = "SELECT count(lo_unlink(lo_create(0))) FROM generate_series(1, {n})"
# Room left for the measure's own tail, taken by advisory locks first (each takes the same
# entries as a large object's lock, and 23 000 of them take 25 ms, not a second).
TAIL = 300


def room_for(pair: LocalPair, take: str) -> int:
    """The largest n for which `take` (with {n}) fits in the lock table now, in one
    transaction of the service's login."""
    room = lock_table_room(pair)
    with psycopg.connect(pair.primary.dsn("postgres", user=SERVICE)) as conn:
        conn.execute(
            "SELECT count(pg_advisory_xact_lock(i)) FROM generate_series(1, %s) i",
            [room - TAIL],
        )
        low, high = 0, TAIL
        while high - low > 1:
            middle = (low + high) // 2
            conn.execute("SAVEPOINT tail")
            try:
                conn.execute(take.format(n=middle))
                low = middle
            except psycopg.errors.OutOfMemory:
                high = middle
            conn.execute("ROLLBACK TO SAVEPOINT tail")
        conn.rollback()
    return room - TAIL + low


async def while_a_holds(
    client: httpx.AsyncClient,
    watcher: psycopg.AsyncConnection[Any],
    attack: str | Sequence[str],
) -> tuple[httpx.Response, httpx.Response]:
    """A runs `attack` (a statement, or several) and sleeps in the same transaction; B
    writes to rows42 while A sleeps: (A, B)."""
    statements = [attack] if isinstance(attack, str) else list(attack)
    a_task = asyncio.ensure_future(
        transaction(client, "write", *statements, "SELECT pg_sleep(1.5)", timeout_ms=6000)
    )

    async def sleeping() -> bool:
        try:
            cur = await watcher.execute(SLEEPING, [SERVICE])
        except psycopg.errors.OutOfMemory:  # (the watcher's own read: the table is full)
            return True
        return await cur.fetchone() is not None or a_task.done()

    await eventually(sleeping, "A to hold its locks and sleep", 10)
    b = await query(client, "admin", "INSERT INTO rows42 (x) VALUES (1)", timeout_ms=1000)
    return await a_task, b


async def unlinks_are_refused_and_b_writes(pair: LocalPair, client: httpx.AsyncClient) -> None:
    """A's unlink of as many large objects as the lock table takes is refused; B writes."""
    watcher = await psycopg.AsyncConnection.connect(pair.primary.dsn(), autocommit=True)
    try:
        room = room_for(pair, TAKE)
        a, b = await while_a_holds(client, watcher, TAKE.format(n=room - 3))
    finally:
        await watcher.close()
    assert a.status_code == 400, a.text
    assert "lo_unlink() are taken at most" in a.json()["detail"], a.text
    assert b.status_code == 200, f"another key's write failed: {b.text} (A: {a.text})"


async def test_unlinked_large_objects_fill_the_lock_table_for_every_key(
    pair: LocalPair,
) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN, pool_max_size=2, pool_min_size=2) as client:
        await unlinks_are_refused_and_b_writes(pair, client)


async def test_behind_pgbouncer_too(pair: LocalPair, work_dir: Path) -> None:
    async with behind_pgbouncer(
        pair, work_dir, SETUP, TEARDOWN, server_connections=2, pool_max_size=2, pool_min_size=2
    ) as (_, _app, client):
        await unlinks_are_refused_and_b_writes(pair, client)
