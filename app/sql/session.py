"""Session hygiene: what every pooled connection starts with, what a statement may leave behind
in it, and how it is put back clean before anyone else gets it.

Connections are shared by every caller, so what one request changes in its session must not
reach the next. Settings mirrorpool relies on (time zone, date and interval styles, default
timeouts) are startup options, so a reset restores them. Whether a statement may have changed
its session is read from its parse tree (app/sql/tree.py): a statement is clean only when the
tree proves it, that is when it sets nothing for the session, creates nothing temporary,
takes no session lock, holds no cursor, listens to nothing and calls only vetted catalog
functions (app/sql/catalog.py). Anything else (DO, CALL, a function of the database's own,
SET, set_config, temporary tables, advisory locks, ...) has its connection reset with
DISCARD ALL, or closed when even that could leave something behind, before reuse.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Literal

import psycopg
from psycopg import AsyncConnection

from app.sql import catalog, pipeline
from app.sql.schema_code import SchemaCode
from app.sql.tree import Tree, kept_on_tree
from app.sql.tree_walk import TRUNCATE_CASCADE

Isolation = Literal["read_committed", "repeatable_read", "serializable"]

# A read-only serializable transaction commits (its reads are only proven serializable by
# its commit) after rolling back to this savepoint, which undoes what it did; the name is
# reserved (app/sql/refusals.py).
READ_ONLY_SAVEPOINT = "mirrorpool_read_only"


class Effect(IntEnum):
    """What a statement may leave in its session, and so what its connection needs after."""

    NONE = 0  # provably nothing: the connection goes straight back
    RESET = 1  # session state: DISCARD ALL (and mirrorpool's prepared names forgotten)
    CLOSE = 2  # something DISCARD ALL does not undo (a loaded library, the random seed)


# The statements that, by what they are, leave nothing in the session (what they call is
# judged apart). Any other statement (DDL, LISTEN, CALL, ...) has its session reset after:
# what a kind of statement may leave behind is not worth guessing (a temporary type, a
# conversion, an operator class in pg_temp all shadow the database's own for the session).
_CLEAN_KINDS = frozenset(
    {
        "SelectStmt",
        "InsertStmt",
        "UpdateStmt",
        "DeleteStmt",
        "MergeStmt",
        "ExplainStmt",
        "VariableShowStmt",
        "VariableSetStmt",  # judged by its scope below
        "TransactionStmt",
        "DeclareCursorStmt",  # judged by WITH HOLD below
        "FetchStmt",
        "ClosePortalStmt",
        "ConstraintsSetStmt",
        "LockStmt",
        "NotifyStmt",
    }
)
# A DO block's body is code the tree cannot read; LOAD and CREATE / ALTER EXTENSION load a
# library into the backend for good.
# TRUNCATE ... CASCADE empties tables the statement does not name, and runs their ON TRUNCATE
# triggers, which the catalog reading does not follow.
_CLOSE_KINDS = frozenset(
    {"DoStmt", "LoadStmt", "CreateExtensionStmt", "AlterExtensionStmt", TRUNCATE_CASCADE}
)


# Parameters the server reports whenever they change: a change means the session was altered.
_REPORTED = (
    b"TimeZone",
    b"DateStyle",
    b"IntervalStyle",
    b"is_superuser",
    b"session_authorization",
    b"standard_conforming_strings",
    b"client_encoding",
    b"search_path",  # (reported by PostgreSQL 18 and later)
)


@kept_on_tree
def effect(tree: Tree) -> Effect:
    """What the statement may leave behind in its session."""
    if (
        tree.kinds & _CLOSE_KINDS
        or tree.maybe_called & catalog.SURVIVES_RESET
        or custom_settings(tree)
        # A function of the database's own may do what no reset undoes: define a custom
        # setting's placeholder (`app.tenant` reads '' instead of NULL ever after), seed
        # random(). Only a new backend forgets that.
        or calls_own_code(tree)
        # PL/pgSQL compiles a function once per backend and keeps it through DISCARD ALL,
        # with the names its body reads (`prices.amount%TYPE`) resolved as the session then
        # saw them: under a temporary table, or a search path of the request's own, every
        # later key's call would keep that reading. Only a new backend forgets it.
        or tree.temp
        or _sets_search_path(tree)
    ):
        return Effect.CLOSE
    dirty = (
        any(kind.endswith("Stmt") and kind not in _CLEAN_KINDS for kind in tree.kinds)
        # SELECT ... INTO creates a table: with pg_temp first on the search path, a
        # temporary one that shadows the database's own.
        or "IntoClause" in tree.kinds
        # Any setting, even a local one: plans made under it (a literal read in its time
        # zone, a function's cached plans) would outlive it; DISCARD ALL drops them.
        or _changes_a_setting(tree)
        # A volatile catalog function called in attribute notation, `(42).pg_advisory_lock`.
        or bool(tree.attributes & catalog.UNVETTED_VOLATILE)
        or tree.hold_cursor
        or bool(tree.unvetted_calls)
    )
    return Effect.RESET if dirty else Effect.NONE


def _sets_search_path(tree: Tree) -> bool:
    """True when the statement sets the search path, in any scope."""
    return any(s.name == "search_path" for s in tree.settings) or any(
        c.name == "search_path" for c in tree.set_configs
    )


def custom_settings(tree: Tree) -> bool:
    """True when the statement sets a custom setting (a dotted name such as app.tenant), in
    any scope. PostgreSQL keeps such a placeholder defined in the session for good (DISCARD
    ALL resets its value to '', not to undefined): on a pooled connection every later key's
    current_setting('app.tenant', true) would say '' instead of NULL. The connection is
    closed after instead."""
    return any("." in (s.name or "") for s in tree.settings) or any(
        "." in (c.name or "") for c in tree.set_configs
    )


def sets_anything(tree: Tree) -> bool:
    """True when the statement changes a setting, in any scope. A statement prepared by name
    after it, in the same transaction, would be read under that setting (a literal's time
    zone, array_nulls...) and keep that reading for every later key: such a transaction
    prepares nothing (app/sql/transactions.py)."""
    return bool(tree.settings or tree.set_configs)


def _changes_a_setting(tree: Tree) -> bool:
    """True for a SET, RESET or set_config() in any scope (SET TRANSACTION ... aside: the
    isolation level and access mode end with the transaction and shape no plan)."""
    return bool(tree.set_configs) or any(
        s.kind != "VAR_SET_MULTI" or s.name == "session characteristics" for s in tree.settings
    )


def calls_own_code(tree: Tree) -> bool:
    """True when the statement calls a function that is not the catalog's (by a name no
    pg_catalog function has, or qualified by another schema)."""
    return any(
        not catalog.catalog_or_dblink(call[-1]) or (len(call) > 1 and call[-2] != "pg_catalog")
        for call in tree.calls
        if call
    )


@kept_on_tree
def changes_schema(tree: Tree) -> bool:
    """True for a statement that may create, change or drop what the catalog holds (any
    statement but a query, DML and the few clean kinds; SELECT ... INTO; a call of the
    database's own code, which may run DDL): the facts of app/sql/schema_code.py are unknown
    until the catalog is read again."""
    return _utility(tree) or calls_own_code(tree)


def _utility(tree: Tree) -> bool:
    """DDL and the like (any statement but a query, DML and the few clean kinds; SELECT ...
    INTO): what may change the catalog, and what fires event triggers."""
    return "IntoClause" in tree.kinds or any(
        kind.endswith("Stmt") and kind not in _CLEAN_KINDS for kind in tree.kinds
    )


def runs_unseen(tree: Tree, code: SchemaCode) -> bool:
    """The statement may run code of the database's own out of the tree's sight
    (SchemaCode.runs_unseen_code), or fire an event trigger: DDL while one is enabled, or
    while the facts are unknown (its function runs before the statement's privileges are
    checked, so a refused or empty DDL runs it too)."""
    if (code.event_triggers or not code.known) and _utility(tree):
        return True
    return code.runs_unseen_code(tree)


def effect_with(tree: Tree, code: SchemaCode) -> Effect:
    """What the statement may leave behind, counting the code of the database's own that it
    runs out of the tree's sight (a view's, a trigger's, ...: app/sql/schema_code.py)."""
    found = effect(tree)
    if found is not Effect.CLOSE and runs_unseen(tree, code):
        # Code of the database's own may leave what only a new backend forgets (see
        # effect()). While the catalog is being read again (unknown facts) every statement
        # that may reach such code counts: app/sql/execution.py mark() judges those once the
        # reading is in, rather than close every connection meanwhile.
        return Effect.CLOSE
    return found


def pure_read_with(tree: Tree, code: SchemaCode) -> bool:
    """pure_read(), and no code of the database's own runs out of sight."""
    return pure_read(tree) and not runs_unseen(tree, code)


# Data-changing statements that may share a lane when they leave the session as it was.
_LANE_WRITES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})


def lane_write(tree: Tree) -> bool:
    """A plain INSERT, UPDATE, DELETE or MERGE proven to leave its session as it was: in
    autocommit it is its own transaction, so it may share a lane (app/sql/multiplex.py)."""
    return (
        tree.kind in _LANE_WRITES
        and not tree.temp
        and "IntoClause" not in tree.kinds
        and effect(tree) is Effect.NONE
    )


def may_share(tree: Tree, code: SchemaCode, writes: bool = False) -> bool:
    """What may run in a lane: a pure read, or with `writes` a plain write, that runs no code
    of the database's own out of sight."""
    return (
        (pure_read(tree) or (writes and lane_write(tree)))
        and not runs_unseen(tree, code)
        and tree.maybe_called.isdisjoint(catalog.RANDOM_DRAWS)
        and not code.draws_random(tree)
    )


# Before a write on its own: its deferred constraints are checked inside the statement, under
# its timeout (app/sql/plain.py IMMEDIATE, transactions.py, pgbouncer.py).
IMMEDIATE_SQL = "SET CONSTRAINTS ALL IMMEDIATE"


def changes_data(tree: Tree) -> bool:
    """A statement that may write rows, and so fire deferred constraint checks: DML
    anywhere in it (`tree.writes`: the statement itself, a data-modifying WITH), a query not
    proven a pure read (a function of the database's own may write), a CALL. (A procedure
    may still end its transaction on the plain path, which sends no BEGIN; the transactions
    after its COMMIT check theirs at their end.)"""
    return (
        tree.writes
        or tree.kind == "CallStmt"
        or (tree.kind == "SelectStmt" and not pure_read(tree))
    )


def pure_read(tree: Tree) -> bool:
    """A query that writes nothing, locks no rows and is proven to leave its session as it
    was: what may share a connection with other requests' statements (app/sql/multiplex.py)."""
    return (
        tree.kind == "SelectStmt"
        and not (tree.writes or tree.locks or tree.temp)
        and effect(tree) is Effect.NONE
    )


def reads_sequence_state(tree: Tree) -> bool:
    """True when the statement reads values this session's earlier nextval() calls left
    (currval, lastval): on a pooled connection they could be another key's."""
    return not tree.maybe_called.isdisjoint(catalog.SESSION_SEQUENCE_READERS)


def startup_options(settings: dict[str, str]) -> str:
    """The libpq `options` value that sets these parameters at connection start."""
    parts = []
    for name, value in settings.items():
        escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
        parts.append(f"-c {name}={escaped}")
    return " ".join(parts)


def snapshot(conn: AsyncConnection[Any]) -> tuple[bytes | None, ...]:
    """The reported parameters, to compare after a statement (raw: this runs per request)."""
    status = conn.pgconn.parameter_status
    return tuple(status(p) for p in _REPORTED)


async def restore(conn: AsyncConnection[Any], needed: Effect) -> None:
    """Put a session back as the pool made it: DISCARD ALL (and forget the statements
    mirrorpool had prepared on it), or close the connection (the pool replaces it) when a
    reset is not enough or fails."""
    if conn.closed or needed is Effect.NONE:
        return
    if needed is Effect.RESET:
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.execute("ROLLBACK")
            # Settings first, by a statement that takes no snapshot: under serializable read
            # only deferrable defaults, DISCARD ALL's transaction waits for a safe snapshot
            # while another session's serializable transaction runs (pass 38).
            await conn.execute("RESET ALL")
            await conn.execute("DISCARD ALL")
            pipeline.forget_prepared(conn)
            return
        except psycopg.Error:
            pass
    await conn.close()


# Drops what SQL PREPAREd, not what a protocol did (a pooler's own, for its other clients).
DEALLOCATE_SQL_PREPARED = (
    "DO $$ DECLARE n text; BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_prepared_statements"
    " p WHERE NOT p.from_sql) THEN DEALLOCATE ALL; RETURN; END IF; FOR n IN SELECT p.name"
    " FROM pg_catalog.pg_prepared_statements p WHERE p.from_sql"
    " LOOP EXECUTE pg_catalog.format('DEALLOCATE %I', n); END LOOP; END $$"
)


# The transaction's own limits, as one statement that pipeline mode can send (it takes one
# statement per command, so not the `BEGIN; SET LOCAL ...` string above).
LOCAL_LIMITS_SQL = (
    "SELECT pg_catalog.set_config('statement_timeout', $1, true),"
    " pg_catalog.set_config('lock_timeout', $2, true)"
)


def begin_statement(isolation: Isolation | None, read_only: bool, deferrable: bool = False) -> str:
    """BEGIN with the transaction's isolation level, access mode and deferrable mode (which
    PostgreSQL heeds only in a serializable read-only transaction: it waits for a snapshot
    that cannot fail, then runs without serialization checks)."""
    mode = []
    if isolation:
        mode.append("ISOLATION LEVEL " + isolation.replace("_", " ").upper())
    if read_only:
        mode.append("READ ONLY")
    if deferrable:
        mode.append("DEFERRABLE")
    return " ".join(["BEGIN", *mode])


def opening(isolation: Isolation | None, read_only: bool, deferrable: bool = False) -> list[str]:
    """The statements that open a request's transaction, in order."""
    begin = begin_statement(isolation, read_only, deferrable)
    if read_only and isolation == "serializable":
        return [begin, f"SAVEPOINT {READ_ONLY_SAVEPOINT}"]
    return [begin]


def closing(isolation: Isolation | None, read_only: bool) -> list[str]:
    """The statements that end a request's transaction once its statements succeeded.

    A read-only transaction is rolled back, not committed: it had nothing to keep, and what
    a function the parse tree cannot see into did all the same (a large object, a
    notification, a setting) is undone with it. A serializable one first rolls back to its
    savepoint, then commits, so that its reads are still proven serializable.
    """
    if not read_only:
        return ["COMMIT"]
    if isolation == "serializable":
        return [f"ROLLBACK TO SAVEPOINT {READ_ONLY_SAVEPOINT}", "COMMIT"]
    return ["ROLLBACK"]
