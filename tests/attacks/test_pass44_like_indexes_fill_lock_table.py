"""Pass 44: the bound of 4 sequences and indexes to a statement (refusals.py
MAX_OBJECTS_MADE, pass 42) counts the constraints a statement spells, not the indexes that
CREATE TABLE ... (LIKE t INCLUDING INDEXES) copies. Each temporary table of a chain copies
every index of the one before and adds 4 of its own, so statement k makes 30 + 4(k + 1)
indexes (seeded by rows42's 30, the harness's wide table): what one /v1/transaction holds
grows with the square of its statements, and one key's transactions fill the server's shared
lock table; every other key's write fails with "out of shared memory" while they last.

    key A:  two /v1/transaction at once (timeout_ms 60000), each a chain:
              CREATE TEMP TABLE t0 (LIKE rows42 INCLUDING INDEXES, note text,
                                    c0_0 int UNIQUE, ..., c0_3 int UNIQUE)
              CREATE TEMP TABLE t1 (LIKE t0 INCLUDING INDEXES, c1_0 int UNIQUE, ...)
              ... (70 statements in the first, 12 462 entries; about 66 in the second, to
                   hold together 150 more than the room advisory locks find, 23 235 here)
              SELECT pg_sleep(...)
                -> 200 each; every statement makes 4 objects by the rule's count
            then, having found by trying what is left (253 advisory locks), a third:
              SELECT pg_advisory_xact_lock(445000), ... (4 constants a statement, 62 of
              them, 245 locks: what the rule allows), SELECT pg_sleep(3)
    key B:  INSERT INTO rows42 (x) VALUES (1), timeout_ms 1000, while all three sleep
            (another key, another pooled connection; pool of 6, A's share 3)
                -> 503 "out of shared memory" (sqlstate 53200), instead of 200
    measured (on a connection of the service's login): statement k of a chain holds
    40 + 4k entries (its table, toast table and index, 30 + 4(k + 1) indexes, 3 more), and
    2 more once per transaction: 70 statements hold 12 462 entries in 8 s; 100 would hold
    23 366 in a single transaction, over the 23 235 that advisory locks find room for
    (relation locks leave some 360 more of the hash's slack). The test takes about 13 s;
    B 503 in 4 runs of 4 with the service's own catalog readings hourly (with them every
    0.1 s a reading's transient entries made it 1 of 3).

Root cause: tree_walk._makes_one counts CreateSeqStmt, IndexStmt and the constraints and
serial columns written in the tree; a TableLikeClause's INCLUDING INDEXES / IDENTITY / ALL
makes one index (or sequence) per index (identity column) of the relation it copies, which
the tree does not show, and that relation may be a copy the statement before made
(temporary: no catalog reading sees it, and since 082e163 none is even begun around a
temp_only CREATE). The tree counts the same way CREATE TEMP TABLE ... PARTITION OF a
parent with indexes (objects_made 0, one index made per index of the parent) and CREATE
INDEX on a partitioned table (objects_made 1, one index made per partition); not measured.
The bound per statement is also not a bound per key: a key holds key_max_pool_share of the
pool, each connection a transaction.

Suggested fix: refuse a TableLikeClause that copies indexes or identity columns (INCLUDING
INDEXES / IDENTITY / ALL), PARTITION OF a partitioned table with indexes, and CREATE INDEX on
a partitioned relation, to keys (a migration may); or bound what a transaction makes by what
it has made (count the relations its backend locks in AccessExclusiveLock after each
statement of a /v1/transaction), and the key's transactions together.

Fixed (app/sql/tree_walk.py _note_copied, app/sql/refusals.py): LIKE ... INCLUDING INDEXES,
IDENTITY or ALL is refused to keys (400, naming the statement), since what it makes is the
copied relation's count, which the tree does not show; LIKE with the other options, and
INCLUDING ALL EXCLUDING INDEXES EXCLUDING IDENTITY, run. A's first chain is now refused at
its first statement, before anything runs, and B's write goes through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from app.devdb import LocalPair
from tests.attacks.conftest import attacked, headers, query, transaction
from tests.attacks.test_pass42_large_object_locks import SETUP, TEARDOWN
from tests.conftest import as_owner, login_role
from tests.waiting import eventually

FIRST = 70
COPYING = (
    "CREATE TEMP TABLE c44 (LIKE rows42 INCLUDING IDENTITY)",
    "CREATE TEMP TABLE c44 (LIKE public.rows42 INCLUDING ALL)",
    'CREATE TEMP TABLE c44 (LIKE "rows42" INCLUDING ALL EXCLUDING INDEXES)',
    "CREATE TEMP TABLE c44 (/* a copy */ LIKE rows42 INCLUDING DEFAULTS INCLUDING INDEXES)",
)
COPYING_NONE = (
    "CREATE TEMP TABLE c44 (LIKE rows42)",
    "CREATE TEMP TABLE c44 (LIKE rows42 INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
    "CREATE TEMP TABLE c44 (LIKE rows42 INCLUDING ALL EXCLUDING INDEXES EXCLUDING IDENTITY)",
)


def link(k: int) -> str:
    """The chain's statement k: a copy of table k - 1 (rows42 for the first) and 4 uniques."""
    own = ", ".join(f"c{k}_{j} int UNIQUE" for j in range(4))
    if k == 0:
        return f"CREATE TEMP TABLE t0 (LIKE rows42 INCLUDING INDEXES, note text, {own})"
    return f"CREATE TEMP TABLE t{k} (LIKE t{k - 1} INCLUDING INDEXES, {own})"


@asynccontextmanager
async def quiet_service(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    """The attacks' keys on a pool of 6 (A's share 3), once the service has read the catalog
    with rows42 in it, and reading it again only hourly: no catalog reading of its own takes
    lock table entries while A tops the table up."""
    role, password = login_role(pair, "lowpriv")
    as_owner(pair, *SETUP)
    try:
        async with attacked(
            pair, role, password, pool_max_size=6, pool_min_size=6, schema_refresh_s=3600
        ) as client:

            async def read() -> bool:
                r = await client.get("/pool/stats", headers=headers("admin"))
                return r.json()["schema_code"]["read_at"] is not None

            await eventually(read, "the service's first reading of the catalog")
            yield client
    finally:
        as_owner(pair, *TEARDOWN)


async def test_copied_indexes_are_refused(pair: LocalPair) -> None:
    async with quiet_service(pair) as client:
        chain = [*(link(k) for k in range(FIRST)), "SELECT pg_sleep(30)"]
        a = await transaction(client, "write", *chain, timeout_ms=60000)
        assert a.status_code == 400, a.text
        assert a.json()["statement_index"] == 0, a.text
        assert "LIKE ... INCLUDING INDEXES" in a.json()["detail"], a.text
        for sql in COPYING:
            r = await query(client, "write", sql)
            assert r.status_code == 400, f"{sql}: {r.text}"
        for sql in COPYING_NONE:
            r = await query(client, "write", sql)
            assert r.status_code == 200, f"{sql}: {r.text}"
        b = await query(client, "admin", "INSERT INTO rows42 (x) VALUES (1)", timeout_ms=1000)
        assert b.status_code == 200, b.text
