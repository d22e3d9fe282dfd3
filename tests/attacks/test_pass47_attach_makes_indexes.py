"""Pass 47: ALTER TABLE ... ATTACH PARTITION makes indexes the transaction's bound does not
count. Pass 44 bounds a transaction's statements to 16 relations, sequences and indexes
(app/sql/lock_code.py made_refusal), by the tree's count; attaching a partition to a
partitioned table with indexes makes one index per parent index on the partition and on each
of its own partitions (AttachPartitionEnsureIndexes), and the tree counts 0. DETACH keeps
those indexes; DROP INDEX them and ATTACH again makes as many anew, each holding its entry of
the server's shared lock table until the transaction ends: what one transaction holds grows
with its statements, as with the rewrites of pass 45.

    key A:  /v1/transaction (99 statements):
              CREATE TEMP TABLE p47 (a int, b int, c int, d int) PARTITION BY LIST (a)
              CREATE INDEX ON p47 (b) ... 7 of them (b, c, d, (b, c) ...)
              CREATE TEMP TABLE x47 (...) PARTITION BY LIST (a)
              CREATE TEMP TABLE x47_0 PARTITION OF x47 FOR VALUES IN (0) ... 7 of them
                                             (16 made: the bound exactly)
              ALTER TABLE p47 ATTACH PARTITION x47 FOR VALUES IN (0, ..., 6)    (56 indexes)
              27 x (ALTER TABLE p47 DETACH PARTITION x47;
                    DROP INDEX x47_b_idx, ... (the 7 copies and their 49 children);
                    ALTER TABLE p47 ATTACH PARTITION x47 ...)                (56 more each)
              SELECT pg_sleep(2)
            -> 200; measured 1,802 lock entries held by A's backend while it sleeps (100
               with no cycle, 163 with one: 63 a cycle), where the bound was set for 92
               (pass 44); a key's share of the default pool (5 connections) holds ~9,000 of
               the harness's 23,235, and a share of 13 (a pool of 26) the whole table.

Root cause: tree_walk._makes_one / _rewrites count CREATE INDEX / SEQUENCE, constraints,
serial columns and rewriting commands; AT_AttachPartition (and CREATE TABLE ... PARTITION OF a
parent that has indexes) makes the parent's indexes on the partition's whole subtree, which
the tree does not show, and DROP INDEX / DETACH PARTITION let it be done again.

Fixed (app/sql/tree_walk.py _REWRITING_COMMANDS): ATTACH PARTITION counts as a rewrite, 8
toward the transaction's 16; A's transaction is refused at its first ATTACH (statement 16),
before anything runs, and a small one (a parent of one index, one partition) still attaches.
"""

from __future__ import annotations

import asyncio

import psycopg

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, transaction
from tests.attacks.test_pass42_large_object_locks import SETUP, TEARDOWN
from tests.waiting import eventually

COLS = ["b", "c", "d", "b, c", "b, d", "c, d", "b, c, d"]
COPIES = ", ".join(f"x47_{c.replace(', ', '_')}_idx" for c in COLS)
MADE = [
    "CREATE TEMP TABLE p47 (a int, b int, c int, d int) PARTITION BY LIST (a)",
    *(f"CREATE INDEX ON p47 ({c})" for c in COLS),
    "CREATE TEMP TABLE x47 (a int, b int, c int, d int) PARTITION BY LIST (a)",
    *(f"CREATE TEMP TABLE x47_{i} PARTITION OF x47 FOR VALUES IN ({i})" for i in range(7)),
]
ATTACH = "ALTER TABLE p47 ATTACH PARTITION x47 FOR VALUES IN (0, 1, 2, 3, 4, 5, 6)"
CYCLE = ["ALTER TABLE p47 DETACH PARTITION x47", f"DROP INDEX {COPIES}", ATTACH]
ATTACK = [*MADE, ATTACH, *(s for _ in range(27) for s in CYCLE)]
HELD = (
    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
    " WHERE a.usename = %s AND a.pid <> pg_backend_pid()"
)


async def test_attached_partitions_count_toward_the_transactions_bound(pair: LocalPair) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        watcher = await psycopg.AsyncConnection.connect(pair.primary.dsn(), autocommit=True)
        try:
            a_task = asyncio.ensure_future(
                transaction(client, "write", *ATTACK, "SELECT pg_sleep(2)", timeout_ms=20000)
            )

            async def sleeping() -> bool:
                cur = await watcher.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE usename = %s AND wait_event = 'PgSleep'",
                    [SERVICE],
                )
                return await cur.fetchone() is not None or a_task.done()

            await eventually(sleeping, "A to hold what it made and sleep", 20)
            cur = await watcher.execute(HELD, [SERVICE])
            row = await cur.fetchone()
            held = int(row[0]) if row else 0
            a = await a_task
        finally:
            await watcher.close()
        # (pass 44's bound: 16 made held 92 entries; what a transaction may hold is that)
        assert a.status_code == 400, (
            f"A's transaction within the bound of 16 made held {held} lock entries:"
            f" {a.status_code} {a.text[:200]}"
        )
        assert a.json()["statement_index"] == len(MADE), a.text
        assert "at most 16 are made in one transaction" in a.json()["detail"], a.text


async def test_a_small_attach_still_runs(pair: LocalPair) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        a = await transaction(
            client,
            "write",
            "CREATE TEMP TABLE p47s (a int, b int) PARTITION BY LIST (a)",
            "CREATE INDEX ON p47s (b)",
            "CREATE TEMP TABLE x47s (a int, b int)",
            "ALTER TABLE p47s ATTACH PARTITION x47s FOR VALUES IN (1)",
            "INSERT INTO p47s VALUES (1, 2) RETURNING tableoid::regclass::text",
        )
        assert a.status_code == 200, a.text
        assert a.json()["results"][4]["rows"] == [["x47s"]]
