"""Pass 44: the lock rule's refusal of a relation whose default locks a value per row is
escaped by copying the default onto a temporary table of the key's own. The owner's table
draws a ticket per row and locks it (a default, so only writes run it); mirrorpool refuses
every write to it. A key's CREATE TEMP TABLE ... (LIKE jobs44 INCLUDING DEFAULTS) copies
the default; an INSERT into that table names no relation the lock facts know, runs the
copied default once per row, and fills the server's shared lock table: every other key's
write fails with "out of shared memory" while A's transaction lasts.

    owner:  CREATE SEQUENCE tickets44_seq
            CREATE TABLE jobs44 (id bigint, held boolean
              DEFAULT pg_try_advisory_xact_lock(nextval('tickets44_seq')))
    key A:  INSERT INTO jobs44 (id) SELECT g FROM generate_series(1, L) g
                -> 400 "jobs44 runs code of the database's own that locks a value per row"
            /v1/transaction, timeout_ms 6000:
              CREATE TEMP TABLE mine44 (LIKE jobs44 INCLUDING DEFAULTS)
              INSERT INTO mine44 (id) SELECT g FROM generate_series(1, L) g
              SELECT pg_sleep(1.5)
            (L: the lock table's room less 12, 23 223 here; the INSERT takes about 0.1 s)
                -> 200, A holds L advisory locks
    key B:  INSERT INTO rows42 (x) VALUES (1), timeout_ms 1000, while A sleeps (another
            key, another pooled connection; rows42 of test_pass42_large_object_locks.py)
                -> 503 "out of shared memory" (sqlstate 53200), instead of 200
    measured: room 23 235; L = room - 6, -10, -14, -20 all give A 200 and B 503 (room - 3
    fails A's own INSERT); the same with LIKE ... INCLUDING ALL; each run about 1.7 s.
    (INHERITS (jobs44) would copy it too, but needs the owner's rights: 403; a CHECK's
    code counts on reads, so LIKE ... INCLUDING CONSTRAINTS of such a table is refused:
    test_pass44_tried.py.)

Root cause: the lock facts (app/sql/lock_code.py LockCode.written, filled from
schema_queries.CODE_TEXTS_SQL's pg_attrdef rows, which count on writes only) are per relation
name, and LockCode.refusal matches them against the names a statement writes
(tree.written_names). LIKE ... INCLUDING DEFAULTS (and ALL) copies the stored
default to a new relation under another name; the CREATE TEMP TABLE only reads jobs44
(LockCode.read does not hold it: a default does not run on reads), and the INSERT writes
mine44, which no reading of the catalog knows (a temporary relation; and the facts stay
known around a temp_only CREATE since 082e163). Nothing bounds what the
copied default locks.

Suggested fix: count a relation in LockCode.written as read too by a statement that copies
its stored code (a TableLikeClause with INCLUDING DEFAULTS / GENERATED / CONSTRAINTS /
INDEXES / ALL; INHERITS and PARTITION OF, should the login own such a table): refuse the
CREATE that names it so.
"""

from __future__ import annotations

import psycopg
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, query
from tests.attacks.test_pass41_lock_table import lock_table_room
from tests.attacks.test_pass42_large_object_locks import SETUP as TABLE
from tests.attacks.test_pass42_large_object_locks import TEARDOWN as DROP_TABLE
from tests.attacks.test_pass42_large_object_locks import while_a_holds

SETUP = (
    *TABLE,
    "CREATE SEQUENCE tickets44_seq",
    "CREATE TABLE jobs44 (id bigint, held boolean"
    " DEFAULT pg_try_advisory_xact_lock(nextval('tickets44_seq')))",
    f"GRANT SELECT, INSERT ON jobs44 TO {SERVICE}",
    f"GRANT USAGE ON SEQUENCE tickets44_seq TO {SERVICE}",
)
TEARDOWN = (*DROP_TABLE, "DROP TABLE IF EXISTS jobs44", "DROP SEQUENCE IF EXISTS tickets44_seq")
FILL = "INSERT INTO {table} (id) SELECT g FROM generate_series(1, {n}) g"
# Room the measure leaves A's transaction (its temporary table) and B's write needs.
LEFT = 12
COPIES = (
    "CREATE TEMP TABLE mine44 (LIKE jobs44 INCLUDING DEFAULTS)",
    "CREATE TEMP TABLE mine44 (LIKE jobs44 INCLUDING ALL)",
)


@pytest.mark.parametrize("copy", COPIES)
async def test_a_copied_default_fills_the_lock_table(pair: LocalPair, copy: str) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN, pool_max_size=2, pool_min_size=2) as client:
        room = lock_table_room(pair)
        direct = await query(client, "write", FILL.format(table="jobs44", n=room))
        assert direct.status_code == 400, direct.text  # the rule knows the owner's table
        watcher = await psycopg.AsyncConnection.connect(pair.primary.dsn(), autocommit=True)
        try:
            a, b = await while_a_holds(
                client, watcher, [copy, FILL.format(table="mine44", n=room - LEFT)]
            )
        finally:
            await watcher.close()
        assert a.status_code == 400 or b.status_code == 200, (
            f"another key's write failed while A's copy of jobs44's default held "
            f"{room - LEFT} locks: B {b.status_code} {b.text} (A {a.status_code})"
        )
