"""Pass 45: a table rewrite makes relations the transaction's bound does not count. Pass 44
bounds a transaction's statements to 16 relations, sequences and indexes together, by the
tree's count of what each statement makes (app/sql/lock_code.py made_refusal); an ALTER
TABLE that rewrites a table makes none by that count, yet the server builds a new heap for
each partition (make_new_heap) and a new index for every index on a changed column, and the
transaction holds a lock entry on each until it ends.

    key A:  /v1/transaction (100 statements):
              CREATE TEMP TABLE p45 (a int, b int) PARTITION BY LIST (a)
              CREATE TEMP TABLE p45_0 PARTITION OF p45 FOR VALUES IN (0)    ... 8 of them
              CREATE INDEX ON p45 (a, b)                                    ... 7 of them
              ALTER TABLE p45 ALTER b TYPE int8 / int4 (alternately)        ... 83 of them
              SELECT pg_sleep(...)
            -> 200; 16 made by the tree's count (the bound exactly: pass 44 measured the
               same prefix at 92 lock entries), measured 7,612 lock entries held with 80
               ALTERs, 7,894 with 83 (about 94 per ALTER: 8 new heaps and 64 new indexes,
               and the old ones' locks), PostgreSQL 15, 2 cores, on the harness's lock
               table of 23,235
    A on its share of a pool of 10 (5 connections, key_max_pool_share 0.5) at once: 3 such
            transactions of 80 ALTERs, a fourth sized to what is left, a fifth of advisory
            locks within pass 41's bound (4 a statement) for the last few hundred entries,
            each then sleeping: the server's shared lock table is full. Key B's INSERT
            (admin key, its own connection) then answers 503 "out of shared memory"
            (53200) or 504 after its 1000 ms, instead of 200: 6 of the last 7 runs (in the
            seventh A's last transaction was the one to hit 53200, and let go);
            meanwhile every new connection fails with "FATAL: out of shared memory", so
            does the harness's read of pg_stat_activity, and the service's health check
            reports node_down primary and writer_lost ("no reachable node accepts writes").
            With 4 full transactions at once instead, all four hit 53200 themselves: the
            table fills while they run.
    Also (exploration, same shape): 80 x ALTER TABLE p45 ADD COLUMN dN float8 DEFAULT
    random() held 2,013 entries; 80 x CLUSTER of a temporary table held 491.

Root cause: Tree.objects_made / makes_relation (app/sql/tree_walk.py _makes_one, app/sql/
tree.py _MAKES_RELATION) count the objects a statement names, not what the server makes to
carry it out: a rewriting ALTER TABLE (ALTER COLUMN TYPE, ADD COLUMN with a volatile
default, SET ACCESS METHOD ...), CLUSTER and REINDEX build new relations, once per partition
of a partitioned table and once per index, with no count at all.

Suggested fix: count a rewriting AlterTableStmt, CLUSTER and REINDEX as making relations
(refuse them in /v1/transaction beyond a small number, or on a partitioned table), or bound
a transaction's ALTER TABLE / CLUSTER / REINDEX statements together with what it makes.

Fixed (app/sql/tree_walk.py _rewrites, app/sql/lock_code.py REWRITE_COUNTS): an ALTER TABLE
command that rewrites the table (ALTER COLUMN TYPE, ADD COLUMN with a default or a serial or
generated column, SET ACCESS METHOD, SET LOGGED / UNLOGGED), CLUSTER and REFRESH MATERIALIZED
VIEW count 8 each toward the transaction's 16: one fits with what made a small table, and
A's transaction is refused at its first ALTER, before anything runs.
"""

from __future__ import annotations

import pytest

from app.devdb import LocalPair
from app.sql.lock_code import REWRITE_COUNTS
from tests.attacks.conftest import attacked_on, query, transaction
from tests.attacks.test_pass42_large_object_locks import SETUP, TEARDOWN

PARENT = "CREATE TEMP TABLE p45 (a int, b int) PARTITION BY LIST (a)"
PARTITIONS = [f"CREATE TEMP TABLE p45_{i} PARTITION OF p45 FOR VALUES IN ({i})" for i in range(8)]
INDEXES = ["CREATE INDEX ON p45 (a, b)"] * 7
REWRITES = [f"ALTER TABLE p45 ALTER b TYPE {'int8' if i % 2 == 0 else 'int4'}" for i in range(83)]
ATTACK = [PARENT, *PARTITIONS, *INDEXES, *REWRITES]
# Each rewrites p45 once: with the parent and its 8 partitions (9 made) one too many.
SPELLINGS = [
    "ALTER TABLE p45 ALTER COLUMN b SET DATA TYPE text USING b::text",
    'ALTER TABLE "p45" ADD COLUMN c float8 DEFAULT random()',
    "ALTER TABLE pg_temp.p45 ADD COLUMN c serial",
    'ALTER TABLE U&"p\0034\0035" ADD COLUMN c int GENERATED ALWAYS AS (a * 2) STORED',
    "ALTER TABLE p45 /* a comment */ ADD c int DEFAULT 0, ALTER b TYPE int8",
    "ALTER TABLE p45 SET ACCESS METHOD heap",
    "CLUSTER p45_0 USING p45_0_pkey",
]


async def test_a_rewrite_counts_toward_the_transactions_bound(pair: LocalPair) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        a = await transaction(client, "write", *ATTACK, "SELECT pg_sleep(5)")
        assert a.status_code == 400, a.text
        assert a.json()["statement_index"] == 16, a.text  # the first ALTER
        assert f"a table rewrite counts {REWRITE_COUNTS}" in a.json()["detail"], a.text
        for rewrite in SPELLINGS:
            r = await transaction(client, "write", PARENT, *PARTITIONS, rewrite)
            assert r.status_code == 400, f"{rewrite}: {r.text}"
            assert r.json()["statement_index"] == 9, f"{rewrite}: {r.text}"
        # one rewrite with what made a small table: 3 partitions, 3 indexes (15 made)
        small = [PARENT, *PARTITIONS[:3], *INDEXES[:3], REWRITES[0]]
        r = await transaction(client, "write", *small)
        assert r.status_code == 200, r.text
        b = await query(client, "admin", "INSERT INTO rows42 (x) VALUES (1)", timeout_ms=1000)
        assert b.status_code == 200, b.text


@pytest.mark.parametrize("sql", ["ALTER TABLE p45 ADD COLUMN c int", "ALTER TABLE p45 DROP b"])
async def test_what_rewrites_nothing_counts_nothing(pair: LocalPair, sql: str) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        r = await transaction(client, "write", PARENT, *PARTITIONS, *INDEXES, sql)
        assert r.status_code == 200, r.text
