"""Pass 43 (attacker): the lock rule over the database's own code (app/sql/lock_code.py, pass
42) in owner code it does not read as locking many values, and legitimate calls it refuses.

Holes: A (key "write", /v1/transaction, timeout_ms 6000) runs its statement with n = the lock
table's room less 5 (23 230 here), then SELECT pg_sleep(1.5); B (key "admin") runs INSERT
INTO rows42 (x) VALUES (1), timeout_ms 1000, while A sleeps. Measured, every hole, 3 runs
of 3: A 200 (count 23 230), B 503 "out of shared memory" (the test's 2 pooled connections).

H1 A locker whose locked value is of its own making, not its arguments': the "take a ticket"
   / "make an order and hold it" functions, or a lock on an argument whose DEFAULT is
   nextval(). A PL/pgSQL variable counts as steady for the call (_BODY_STEADY), the defaults
   are not read, and a call with no (or constant) arguments counts as one value for the
   statement, so a call per row is let through while it locks a new value per row.
       SELECT count(take_ticket43()) FROM generate_series(1, n)
       SELECT count(new_order43()) FROM generate_series(1, n)
       SELECT count(hold_ticket43()) FROM generate_series(1, n)
H2 RETURN QUERY EXECUTE of a constant text: not read (_dynamic_sites reads only
   PLpgSQL_stmt_dynexecute / dynfors).        SELECT count(*) FROM claim_batch43(n)
H3 OPEN ... FOR EXECUTE of a constant text, fetched in a loop: likewise not read.
       SELECT claim_each43(n)
H4 A function whose body reads the owner's view that locks per row: the view is in
   LockCode.read, but only the key's own tree's relations are matched, not those a function
   body reads.                                SELECT claim_some43(n)
H5 A wrapper that calls the locker in attribute notation, `SELECT (job).claim_job43`: the
   body's A_Indirection is no FuncCall, so the wrapper is no locker.
       SELECT count(claim_attr43(i)) FROM generate_series(1, n) i
H6 An aggregate whose state function locks its input: FUNCTION_CODE_SQL reads prokind f and
   p only, and the aggregate's name is no locker's (its SFUNC is).
       SELECT claim_count43(i) FROM generate_series(1, n) i

False positives (one value locked, answered 400 "... may lock any number of values in a
call" or "... here one that may vary row by row"):

F1 A retry loop on the function's own argument counts as many.   SELECT claim_wait43($1)
F2 A lock in a single-row UPDATE's WHERE on its argument.         SELECT try_claim43($1)
F3 Named notation: NamedArgExpr is no steady node, in the key's statement and in a wrapper's
   body.        SELECT claim_one43(job => $1)        SELECT claim_named43($1)
F4 Overloads share a name: the batch overload's loop makes the single one "many".
       SELECT claim_any43($1::bigint)

Fixed (app/sql/lock_bodies.py, app/sql/lock_code.py): a PL/pgSQL variable is steady only
when every value it takes (its default, each assignment outside a loop) is made of the
function's inputs, other steady variables and constants, and nothing else sets it (INTO,
FETCH, GET DIAGNOSTICS, a loop); argument defaults other than constants make a locker lock
many (f2022a9); RETURN QUERY EXECUTE and OPEN ... FOR EXECUTE of a constant text are read;
a relation a body names is a site, and one whose stored code locks per row makes the
function lock many; attribute notation in a body is a call; an aggregate calls its
functions once per row. F1 and F3 run now: a loop on the argument locks one value, and a
named argument is as steady as what it names. F2 and F4 are still refused (STILL_REFUSED).
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

FUNCTIONS = {
    # H1: a ticket from a sequence, held for the transaction
    "take_ticket43()": "RETURNS bigint LANGUAGE plpgsql AS $$DECLARE t bigint; BEGIN"
    " t := nextval('tickets43'); PERFORM pg_advisory_xact_lock(t); RETURN t; END$$",
    # H1: a new order, held while the transaction fills it in
    "new_order43()": "RETURNS bigint LANGUAGE plpgsql AS $$DECLARE o bigint; BEGIN"
    " INSERT INTO orders43 DEFAULT VALUES RETURNING id INTO o;"
    " PERFORM pg_advisory_xact_lock(o); RETURN o; END$$",
    # H2: claim a batch of jobs nobody holds
    "claim_batch43(n int)": "RETURNS SETOF bigint LANGUAGE plpgsql AS $$BEGIN"
    " RETURN QUERY EXECUTE 'SELECT id FROM jobs43 WHERE pg_try_advisory_xact_lock(id)"
    " LIMIT $1' USING n; END$$",
    # H3: the same through a cursor
    "claim_each43(n int)": "RETURNS bigint LANGUAGE plpgsql AS $$DECLARE c refcursor;"
    " j bigint; got bigint := 0; BEGIN OPEN c FOR EXECUTE 'SELECT id FROM jobs43"
    " WHERE pg_try_advisory_xact_lock(id) LIMIT $1' USING n;"
    " LOOP FETCH c INTO j; EXIT WHEN NOT FOUND; got := got + 1; END LOOP;"
    " CLOSE c; RETURN got; END$$",
    # H5: a wrapper of the owner's locker in attribute notation
    "claim_job43(job bigint)": "RETURNS void LANGUAGE plpgsql"
    " AS 'BEGIN PERFORM pg_advisory_xact_lock(job); END'",
    "claim_attr43(job bigint)": "RETURNS void LANGUAGE sql AS 'SELECT (job).claim_job43'",
    # H1: a lock on the job given, a new ticket by default
    "hold_ticket43(t bigint DEFAULT nextval('tickets43'))": "RETURNS bigint LANGUAGE plpgsql"
    " AS 'BEGIN PERFORM pg_advisory_xact_lock(t); RETURN t; END'",
    # H6: an aggregate whose step claims each job it counts
    "claim_step43(n bigint, job bigint)": "RETURNS bigint LANGUAGE plpgsql"
    " AS 'BEGIN PERFORM pg_advisory_xact_lock(job); RETURN n + 1; END'",
    # H4: a function over the owner's view of unclaimed jobs
    "claim_some43(n int)": "RETURNS bigint LANGUAGE sql"
    " AS 'SELECT count(*) FROM (SELECT id FROM claimable43 LIMIT n) s'",
}


def signature(name: str) -> str:
    """A function's name and argument types, as DROP and GRANT take them (no defaults)."""
    return name.replace(" DEFAULT nextval('tickets43')", "")


TEARDOWN = (
    "DROP AGGREGATE IF EXISTS claim_count43(bigint)",
    *(f"DROP FUNCTION IF EXISTS {signature(name)}" for name in reversed(FUNCTIONS)),
    "DROP TABLE IF EXISTS orders43",
    "DROP SEQUENCE IF EXISTS tickets43",
    "DROP VIEW IF EXISTS claimable43",
    "DROP TABLE IF EXISTS jobs43",
    *DROP_TABLE,
)
SETUP = (
    *TEARDOWN,
    *TABLE,
    "CREATE TABLE jobs43 (id bigint PRIMARY KEY)",
    "INSERT INTO jobs43 SELECT generate_series(1, 30000)",
    "CREATE VIEW claimable43 AS SELECT id FROM jobs43 WHERE pg_try_advisory_xact_lock(id)",
    "CREATE SEQUENCE tickets43",
    "CREATE TABLE orders43 (id bigserial PRIMARY KEY, placed timestamptz DEFAULT now())",
    *(f"CREATE FUNCTION {name} {body}" for name, body in FUNCTIONS.items()),
    *(f"GRANT EXECUTE ON FUNCTION {signature(name)} TO {SERVICE}" for name in FUNCTIONS),
    "CREATE AGGREGATE claim_count43(bigint) (SFUNC = claim_step43, STYPE = bigint, INITCOND = '0')",
    f"GRANT SELECT ON jobs43, claimable43 TO {SERVICE}",
    f"GRANT INSERT, SELECT ON orders43 TO {SERVICE}",
    f"GRANT USAGE ON SEQUENCE tickets43, orders43_id_seq TO {SERVICE}",
)
# A's statement for each hole ({n}: the lock table's room less a few).
ATTACKS = {
    "ticket": "SELECT count(take_ticket43()) FROM generate_series(1, {n})",
    "new order": "SELECT count(new_order43()) FROM generate_series(1, {n})",
    "return query execute": "SELECT count(*) FROM claim_batch43({n})",
    "open for execute": "SELECT claim_each43({n})",
    "function over the view": "SELECT claim_some43({n})",
    "default argument": "SELECT count(hold_ticket43()) FROM generate_series(1, {n})",
    "aggregate": "SELECT claim_count43(i) FROM generate_series(1, {n}) i",
    "attribute wrapper": "SELECT count(claim_attr43(i)) FROM generate_series(1, {n}) i",
}


async def a_holds_and_b(pair: LocalPair, client: httpx.AsyncClient, attack: str) -> str | None:
    """A's attack runs while B writes: what went wrong (B's write failed, or A was let
    through), or None when A is refused and B writes."""
    watcher = await psycopg.AsyncConnection.connect(pair.primary.dsn(), autocommit=True)
    try:
        # (as A would, by trying: a try past the room fails for A alone, and A tries less)
        for margin in (5, 13, 21, 29):
            n = lock_table_room(pair) - margin
            a, b = await while_a_holds(client, watcher, attack.format(n=n))
            if a.status_code != 503 or b.status_code != 200:
                break
    finally:
        await watcher.close()
    if b.status_code != 200:
        return f"B {b.status_code} {_said(b)} while A {a.status_code} {_said(a)}"
    if a.status_code != 400:
        return f"A let through: {a.status_code} {_said(a)} (B {b.status_code})"
    return None


def _said(answer: httpx.Response) -> str:
    """The gist of an answer: its detail, or its results' rows."""
    body = answer.json()
    if "detail" in body:
        return str(body["detail"])[:120]
    return str([r.get("rows") for r in body.get("results", [])])[:120]


async def test_the_owners_lock_code_the_rule_does_not_read(pair: LocalPair) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN, pool_max_size=2, pool_min_size=2) as client:
        failed = {}
        for name, attack in ATTACKS.items():
            why = await a_holds_and_b(pair, client, attack)
            if why is not None:
                failed[name] = why
        assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())


# What an ordinary app calls of the owner's lock code, one value each: each should run.
FP_FUNCTIONS = {
    "claim_one43(job bigint)": "RETURNS void LANGUAGE plpgsql"
    " AS 'BEGIN PERFORM pg_advisory_xact_lock(job); END'",
    # F1: wait for the job's lock, a retry loop on the one value
    "claim_wait43(job bigint)": "RETURNS boolean LANGUAGE plpgsql AS $$BEGIN LOOP"
    " IF pg_try_advisory_xact_lock(job) THEN RETURN true; END IF;"
    " PERFORM pg_sleep(0.01); END LOOP; END$$",
    # F2: mark the job running if nobody holds it
    "try_claim43(job bigint)": "RETURNS boolean LANGUAGE sql AS $$UPDATE tasks43"
    " SET state = 'running' WHERE id = job AND pg_try_advisory_xact_lock(job)"
    " RETURNING true$$",
    # F4: a locker and its batch overload (one name: the batch's loop counts for both)
    "claim_any43(job bigint)": "RETURNS void LANGUAGE plpgsql"
    " AS 'BEGIN PERFORM pg_advisory_xact_lock(job); END'",
    "claim_any43(jobs bigint[])": "RETURNS void LANGUAGE plpgsql AS $$DECLARE j bigint;"
    " BEGIN FOREACH j IN ARRAY jobs LOOP PERFORM pg_advisory_xact_lock(j); END LOOP; END$$",
    # F3: a wrapper in named notation
    "claim_named43(job bigint)": "RETURNS void LANGUAGE sql AS 'SELECT claim_one43(job => job)'",
}
FP_TEARDOWN = (
    *(f"DROP FUNCTION IF EXISTS {name}" for name in reversed(FP_FUNCTIONS)),
    "DROP TABLE IF EXISTS tasks43",
)
FP_SETUP = (
    *FP_TEARDOWN,
    "CREATE TABLE tasks43 (id bigint PRIMARY KEY, state text NOT NULL DEFAULT 'new')",
    "INSERT INTO tasks43 (id) SELECT generate_series(1, 10)",
    *(f"CREATE FUNCTION {name} {body}" for name, body in FP_FUNCTIONS.items()),
    *(f"GRANT EXECUTE ON FUNCTION {name} TO {SERVICE}" for name in FP_FUNCTIONS),
    f"GRANT SELECT, UPDATE ON tasks43 TO {SERVICE}",
)
LEGITIMATE = {
    "retry loop": "SELECT claim_wait43($1)",
    "named argument": "SELECT claim_one43(job => $1)",
    "named wrapper": "SELECT claim_named43($1)",
}
# Still refused, though each locks one value (the rule's cost, in the README): a lock inside
# a statement over rows counts as one per row (`job` there may be a column: PostgreSQL
# prefers the column in a LANGUAGE sql body), and overloads are judged by their name.
STILL_REFUSED = {
    "guarded update": ("SELECT try_claim43($1)", "try_claim43()"),
    "overloaded name": ("SELECT claim_any43($1::bigint)", "claim_any43()"),
}


async def test_ordinary_calls_of_the_owners_lock_code_run(pair: LocalPair) -> None:
    async with attacked_on(pair, FP_SETUP, FP_TEARDOWN) as client:
        plain = await query(client, "write", "SELECT claim_one43($1)", params=[7])
        assert plain.status_code == 200, plain.text  # (the control)
        refused = {}
        for name, sql in LEGITIMATE.items():
            answer = await query(client, "write", sql, params=[7])
            if answer.status_code != 200:
                refused[name] = f"{answer.status_code} {answer.text[:200]}"
        assert not refused, "\n".join(f"{k}: {v}" for k, v in refused.items())
        for sql, named in STILL_REFUSED.values():
            answer = await query(client, "write", sql, params=[7])
            assert answer.status_code == 400, answer.text
            assert f"{named} of the database's own may lock" in answer.json()["detail"]
