"""Pass 42: pass 41's lock-table hole through the owner's code. The owner made the usual
"claim a job" function, which takes a transaction advisory lock on the job it is given; a
key calls it once per row, and one statement fills the server's shared lock table: every
other key's write fails with "out of shared memory" while the transaction lasts.

    owner:  CREATE FUNCTION claim42(job bigint) RETURNS void LANGUAGE plpgsql
              AS 'BEGIN PERFORM pg_advisory_xact_lock(job); END'
    key A:  /v1/transaction, timeout_ms 6000:
              SELECT count(claim42(i)) FROM generate_series(1, L) i
              SELECT pg_sleep(1.5)
            (L: what the lock table takes less 3, 23 232 here; the statement takes 0.1 s)
                -> 200, A holds 23 232 advisory locks
    key B:  INSERT INTO rows42 (x) VALUES (1), timeout_ms 1000, while A sleeps (another
            key, another pooled connection; rows42 of test_pass42_large_object_locks.py)
                -> 503 "out of shared memory" (sqlstate 53200), instead of 200; 3 runs of 3

The same through the owner's view of the jobs nobody holds, the idiom from before SKIP
LOCKED, on a table of 30 000 jobs:

    owner:  CREATE VIEW claimable42 AS SELECT id FROM jobs42
              WHERE pg_try_advisory_xact_lock(id)
    key A:  SELECT count(*) FROM (SELECT id FROM claimable42 LIMIT L) s, then pg_sleep
                -> 200, A holds L advisory locks (23 231 here)
    key B:  the same INSERT -> 503 "out of shared memory"; 3 runs of 3

Root cause: the refusal of pass 41 reads the advisory lock calls in the request's tree
(app/sql/tree_walk.py _note_call, app/sql/tree_nodes.py steady); the owner's function's
body is no part of it, so `claim42(i)` is a call of no interest there, whatever value it is
given row by row, and a view's body is not either (`claimable42` is a relation name).

Fixed (app/sql/lock_code.py, read with the catalog in app/sql/schema_code.py): the database's
own functions in LANGUAGE sql and plpgsql are parsed for the locks they take. A call of one
that takes a lock on what it is given counts under the statement's rule as a lock call does
(at most 4, on values that are the same on every row); one that locks in a loop or over rows
is refused to every statement; a relation whose stored code locks per row is refused. A's
statement is answered 400 before it runs, in every spelling below, and B's write goes
through; `claim42($1)` still runs.
"""

from __future__ import annotations

import httpx
import psycopg

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, query
from tests.attacks.test_pass41_lock_table import lock_table_room
from tests.attacks.test_pass42_large_object_locks import SETUP as TABLE
from tests.attacks.test_pass42_large_object_locks import TEARDOWN as DROP_TABLE
from tests.attacks.test_pass42_large_object_locks import while_a_holds

# The owner's lock code, and code of the owner's over it in every language mirrorpool reads.
FUNCTIONS = {
    "claim42(job bigint)": "RETURNS void LANGUAGE plpgsql"
    " AS 'BEGIN PERFORM pg_advisory_xact_lock(job); END'",
    # a LANGUAGE sql wrapper, and a BEGIN ATOMIC one
    "claim_sql42(job bigint)": "RETURNS void LANGUAGE sql AS 'SELECT claim42(job)'",
    "claim_atomic42(job bigint)": "RETURNS void LANGUAGE sql BEGIN ATOMIC"
    " SELECT pg_try_advisory_xact_lock(job); END",
    # a loop, called once
    "claim_upto42(n int)": "RETURNS void LANGUAGE plpgsql"
    " AS 'BEGIN FOR i IN 1..n LOOP PERFORM claim42(i); END LOOP; END'",
    # dynamic SQL of a constant text, and an assignment
    "claim_exec42(job bigint)": "RETURNS void LANGUAGE plpgsql"
    " AS $$BEGIN EXECUTE 'SELECT pg_advisory_xact_lock($1)' USING job; END$$",
    "claim_set42(job bigint)": "RETURNS boolean LANGUAGE plpgsql"
    " AS 'DECLARE ok boolean; BEGIN ok := pg_try_advisory_xact_lock(job); RETURN ok; END'",
    # an argument's default that differs from call to call
    "claim_default42(job bigint DEFAULT nextval('seq42'))": "RETURNS void LANGUAGE plpgsql"
    " AS 'BEGIN PERFORM pg_advisory_xact_lock(job); END'",
    # a set of locks over rows, called once
    "claim_all42()": "RETURNS bigint LANGUAGE sql"
    " AS 'SELECT count(pg_advisory_xact_lock(id)) FROM jobs42'",
}


def signature(declared: str) -> str:
    """A function's name and argument types, as GRANT names it (no default)."""
    return declared.split(" DEFAULT", 1)[0] + (")" if " DEFAULT" in declared else "")


SETUP = (
    *TABLE,
    "CREATE TABLE jobs42 (id bigint PRIMARY KEY)",
    "INSERT INTO jobs42 SELECT generate_series(1, 30000)",
    "CREATE SEQUENCE seq42",
    f"GRANT USAGE ON SEQUENCE seq42 TO {SERVICE}",
    *(f"CREATE FUNCTION {name} {body}" for name, body in FUNCTIONS.items()),
    *(f"GRANT EXECUTE ON FUNCTION {signature(name)} TO {SERVICE}" for name in FUNCTIONS),
    f"GRANT SELECT ON jobs42 TO {SERVICE}",
)
TEARDOWN = (
    *(f"DROP FUNCTION IF EXISTS {name.split('(')[0]}" for name in reversed(FUNCTIONS)),
    "DROP SEQUENCE IF EXISTS seq42",
    "DROP TABLE IF EXISTS jobs42",
    *DROP_TABLE,
)
PER_ROW = "SELECT count({call}) FROM generate_series(1, {{n}}) i"
# A's statement in each spelling ({n}: the lock table's room), and the name its refusal gives.
SPELLINGS = {
    "plain": (PER_ROW.format(call="claim42(i)"), "claim42"),
    "qualified": (PER_ROW.format(call="public.claim42(i)"), "claim42"),
    "quoted": (PER_ROW.format(call='"claim42"(i)'), "claim42"),
    "unicode": (PER_ROW.format(call='U&"cl\\0061im42"(i)'), "claim42"),
    "commented": (PER_ROW.format(call="claim42/* a job */(i)"), "claim42"),
    "computed": (PER_ROW.format(call="claim42(i * 2 + 1)"), "claim42"),
    "sql wrapper": (PER_ROW.format(call="claim_sql42(i)"), "claim_sql42"),
    "atomic wrapper": (PER_ROW.format(call="claim_atomic42(i)"), "claim_atomic42"),
    "execute": (PER_ROW.format(call="claim_exec42(i)"), "claim_exec42"),
    "assignment": (PER_ROW.format(call="claim_set42(i)"), "claim_set42"),
    "from a table": (
        "SELECT count(claim42(id)) FROM (SELECT id FROM jobs42 LIMIT {n}) s",
        "claim42",
    ),
    "a default": (PER_ROW.format(call="claim_default42()"), "claim_default42"),
    "a loop": ("SELECT claim_upto42({n})", "claim_upto42"),
    "over rows": ("SELECT claim_all42()", "claim_all42"),
}
VIEW_SETUP = (
    *TABLE,
    "CREATE TABLE jobs42 (id bigint PRIMARY KEY)",
    "INSERT INTO jobs42 SELECT generate_series(1, 30000)",
    "CREATE VIEW claimable42 AS SELECT id FROM jobs42 WHERE pg_try_advisory_xact_lock(id)",
    f"GRANT SELECT ON claimable42 TO {SERVICE}",
)
VIEW_TEARDOWN = ("DROP VIEW IF EXISTS claimable42", "DROP TABLE IF EXISTS jobs42", *DROP_TABLE)
CLAIM = "SELECT count(*) FROM (SELECT id FROM claimable42 LIMIT {n}) s"


async def refused_and_b_writes(
    pair: LocalPair, client: httpx.AsyncClient, attack: str, name: str
) -> str | None:
    """A's attack (with {n}: the lock table's room) is refused naming `name`, and B's write
    goes through meanwhile; what went wrong, or None."""
    watcher = await psycopg.AsyncConnection.connect(pair.primary.dsn(), autocommit=True)
    try:
        a, b = await while_a_holds(client, watcher, attack.format(n=lock_table_room(pair) - 3))
    finally:
        await watcher.close()
    if b.status_code != 200:
        return f"another key's write failed: {b.text} (A: {a.text})"
    detail = a.json().get("detail", "") if a.status_code == 400 else ""
    if name not in detail or "shared lock table" not in detail:
        return f"A was not refused for {name}: {a.status_code} {a.text}"
    return None


async def test_the_owners_lock_function_on_every_row_is_refused(pair: LocalPair) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN, pool_max_size=2, pool_min_size=2) as client:
        failed = {}
        for spelling, (attack, name) in SPELLINGS.items():
            why = await refused_and_b_writes(pair, client, attack, name)
            if why is not None:
                failed[spelling] = why
        assert not failed, failed
        # The lock on one value a request gives it still runs, up to the rule's four.
        for one_value in ("SELECT claim42($1)", "SELECT claim42(job => $1)"):
            one = await query(client, "write", one_value, params=[7])
            assert one.status_code == 200, one.text
        four = "SELECT claim42($1), claim_sql42($1), claim_set42(hashtext($2)), claim42(8)"
        both = await query(client, "write", four, params=[7, "job"])
        assert both.status_code == 200, both.text
        five = await query(
            client, "write", four.replace("claim42(8)", "claim42(8), claim42(9)"), params=[7, "job"]
        )
        assert five.status_code == 400 and "lock 5 values" in five.json()["detail"], five.text


async def test_the_owners_view_of_unclaimed_jobs_is_refused(pair: LocalPair) -> None:
    setup = (
        *VIEW_SETUP,
        "CREATE VIEW claimable_too42 AS SELECT * FROM claimable42 WHERE id > 0",
        f"GRANT SELECT ON claimable_too42 TO {SERVICE}",
    )
    teardown = ("DROP VIEW IF EXISTS claimable_too42", *VIEW_TEARDOWN)
    async with attacked_on(pair, setup, teardown, pool_max_size=2, pool_min_size=2) as client:
        failed = {}
        for view in ("claimable42", "claimable_too42", '"claimable42"', "public.claimable42"):
            attack = CLAIM.replace("claimable42", view)
            why = await refused_and_b_writes(pair, client, attack, view.strip('"').split(".")[-1])
            if why is not None:
                failed[view] = why
        assert not failed, failed
        # The table under it is read as ever.
        rows = await query(client, "read", "SELECT count(*) FROM jobs42")
        assert rows.status_code == 200 and rows.json()["rows"] == [["30000"]], rows.text
