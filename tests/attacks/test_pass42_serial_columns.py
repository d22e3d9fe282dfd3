"""Pass 42's third way to fill the server's shared lock table: temporary tables of many
`serial` columns. Each column's sequence takes an entry of the lock table until the
transaction ends: a table of 1,600 of them took 1,601 entries (1.4 s a statement), and in one
/v1/transaction of 40 s, 14 of them held 22,414 entries and the 15th overflowed the table
(measured once, on mirrorpool's own sessions; every other key's writes then fail with "out
of shared memory").

Fixed (app/sql/refusals.py MAX_OBJECTS_MADE, from the tree: app/sql/tree_walk.py
_makes_one): a statement may make at most 4 sequences and indexes (serial and identity
columns, primary keys, unique and exclusion constraints, CREATE SEQUENCE / INDEX). A
transaction of the most statements a request may send, each at that bound, held 1,390 entries
of 23,235; since pass 44 a transaction's statements make at most 16 together
(lock_code.MAX_MADE_IN_TRANSACTION), which hold under a hundredth of the table.
"""

from __future__ import annotations

import asyncio

import psycopg

from app.devdb import SERVICE, LocalPair
from app.sql.lock_code import MAX_MADE_IN_TRANSACTION
from tests.attacks.conftest import attacked_on, query, transaction
from tests.attacks.test_pass41_lock_table import lock_table_room
from tests.attacks.test_pass42_large_object_locks import SETUP, SLEEPING, TEARDOWN
from tests.waiting import eventually

# A statement's worth: a temporary table of `n` serial columns.
MAKE = "CREATE TEMP TABLE t42_{i} (" + "{columns}" + ")"


def serials(n: int) -> str:
    return ", ".join(f"c{i} serial" for i in range(n))


async def test_a_temporary_table_of_1600_serial_columns_is_refused(pair: LocalPair) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN, pool_max_size=2, pool_min_size=2) as client:
        for spelling in ("serial", "pg_catalog.serial8", "int GENERATED ALWAYS AS IDENTITY"):
            columns = ", ".join(f"c{i} {spelling}" for i in range(1600))
            a = await transaction(
                client, "write", "SELECT 1", MAKE.format(i=0, columns=columns), timeout_ms=40000
            )
            assert a.status_code == 400, a.text
            assert "1600 sequences and indexes" in a.json()["detail"], a.text
            assert a.json()["statement_index"] == 1, a.text
        b = await query(client, "admin", "INSERT INTO rows42 (x) VALUES (1)", timeout_ms=1000)
        assert b.status_code == 200, b.text


async def test_a_transaction_at_the_bound_holds_a_hundredth_of_the_lock_table(
    pair: LocalPair,
) -> None:
    """A's transaction of 99 temporary tables of 4 serial columns each (1,390 entries before
    the transaction's own bound) is refused where its statements pass 16 relations,
    sequences and indexes; one of 4 tables of 3 serial columns each, then a sleep, runs, and
    while it sleeps B writes, with A's backend holding under a hundredth of the table."""
    room = lock_table_room(pair)
    async with attacked_on(pair, SETUP, TEARDOWN, pool_max_size=2, pool_min_size=2) as client:
        makes = [MAKE.format(i=i, columns=serials(4)) for i in range(99)]
        refused = await transaction(client, "write", *makes, timeout_ms=30000)
        assert refused.status_code == 400, refused.text
        assert refused.json()["statement_index"] == 3, refused.text  # 5, 10, 15, then 20
        assert f"at most {MAX_MADE_IN_TRANSACTION}" in refused.json()["detail"], refused.text
        makes = [MAKE.format(i=i, columns=serials(3)) for i in range(4)]
        a_task = asyncio.ensure_future(
            transaction(client, "write", *makes, "SELECT pg_sleep(1.5)", timeout_ms=30000)
        )
        async with await psycopg.AsyncConnection.connect(
            pair.primary.dsn(), autocommit=True
        ) as watcher:

            async def sleeping() -> bool:
                cur = await watcher.execute(SLEEPING, [SERVICE])
                return await cur.fetchone() is not None or a_task.done()

            await eventually(sleeping, "A to make its tables and sleep", 25)
            cur = await watcher.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                " WHERE a.usename = %s AND a.wait_event = 'PgSleep'",
                [SERVICE],
            )
            row = await cur.fetchone()
            assert row is not None
            held = int(row[0])
            b = await query(client, "admin", "INSERT INTO rows42 (x) VALUES (1)", timeout_ms=1000)
        a = await a_task
    assert a.status_code == 200, a.text
    assert b.status_code == 200, b.text
    assert 4 * 3 <= held < room / 100, f"A held {held} entries of {room}"
