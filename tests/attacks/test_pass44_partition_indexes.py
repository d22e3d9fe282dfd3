"""Pass 44: what one transaction's statements make together. Each statement keeps to the
bound of 4 sequences and indexes (pass 42), but a temporary partitioned table multiplies
them: each CREATE INDEX on the parent makes one index per partition, and every relation
made holds its entries of the server's shared lock table until the transaction ends.

    key A:  /v1/transaction:
              CREATE TEMP TABLE p44 (a int, b int) PARTITION BY LIST (a)
              CREATE TEMP TABLE p44_0 PARTITION OF p44 FOR VALUES IN (0)   ... 50 of them
              CREATE INDEX ON p44 (b)                                      ... 48 of them
    measured on PostgreSQL 15, on a connection of its own: 2,602 lock entries in 2.3 s;
    a key holds up to its share of the pool in such transactions (5 connections by default),
    13,000 of the 23,235 entries here. 99 temporary tables at the per-statement bound held
    994 (1,390 with serial columns), 5,000 to 7,000 for a key.

Fixed (app/sql/lock_code.py MAX_MADE_IN_TRANSACTION, checked with the lock rule in
app/sql/lock_code.py check): a transaction's statements make at most 16 relations,
sequences and indexes together, by the tree's count (a table, a view, a composite type, a
table made by a query, and what each statement makes by pass 42's count). The partitioned
case at that bound, a parent, 8 partitions and 7 indexes on the parent, held 92 entries.
"""

from __future__ import annotations

from app.devdb import LocalPair
from app.sql.lock_code import MAX_MADE_IN_TRANSACTION
from tests.attacks.conftest import attacked_on, query, transaction
from tests.attacks.test_pass42_large_object_locks import SETUP, TEARDOWN

PARENT = "CREATE TEMP TABLE p44 (a int, b int) PARTITION BY LIST (a)"


def partitions(n: int) -> list[str]:
    return [f"CREATE TEMP TABLE p44_{i} PARTITION OF p44 FOR VALUES IN ({i})" for i in range(n)]


def indexes(n: int) -> list[str]:
    return ["CREATE INDEX ON p44 (b)"] * n


async def test_a_transaction_makes_at_most_16_relations_sequences_and_indexes(
    pair: LocalPair,
) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        a = await transaction(client, "write", PARENT, *partitions(50), *indexes(48))
        assert a.status_code == 400, a.text
        # the parent and 15 partitions make 16; the 16th partition is one too many
        assert a.json()["statement_index"] == MAX_MADE_IN_TRANSACTION, a.text
        assert "at most 16 are made in one transaction" in a.json()["detail"], a.text
        for spelling in (
            # a view, a composite type and a table made by a query count as one each
            [*(f"CREATE TEMP VIEW v44_{i} AS SELECT {i}" for i in range(17))],
            [*(f"CREATE TYPE pg_temp.t44_{i} AS (a int)" for i in range(17))],
            [*(f"SELECT {i} AS a INTO TEMP s44_{i}" for i in range(17))],
            # 5 made by each: the table, a serial column and 3 uniques, spelled apart
            [
                f"CREATE TEMP TABLE u44_{i} (a serial, b int UNIQUE, c int,"
                f" UNIQUE (c), d int CONSTRAINT /* x */ u44_{i}_d UNIQUE)"
                for i in range(4)
            ],
        ):
            r = await transaction(client, "write", *spelling)
            assert r.status_code == 400, f"{spelling[0]}: {r.text}"
            assert "made in one transaction" in r.json()["detail"], f"{spelling[0]}: {r.text}"
        at_bound = await transaction(client, "write", PARENT, *partitions(8), *indexes(7))
        assert at_bound.status_code == 200, at_bound.text
        b = await query(client, "admin", "INSERT INTO rows42 (x) VALUES (1)", timeout_ms=1000)
        assert b.status_code == 200, b.text
