"""What no request may run through mirrorpool's shared sessions, and what a read-only request
may not reach, decided from the statement's parse tree (app/sql/tree.py).

Pooled connections are shared by every key, one request at a time, and mirrorpool runs each
request inside limits it sets itself. Refused for every request:

- PREPARE, EXECUTE, DEALLOCATE, DISCARD: mirrorpool prepares statements by name on pooled
  connections itself; a request that could replace or drop them could make another key's
  next request run its SQL. For the same reason pg_prepared_statements (which lists them,
  with the other keys' SQL) is not readable.
- transaction control (BEGIN, COMMIT, ROLLBACK, PREPARE TRANSACTION, COMMIT PREPARED, ...):
  it would end the transaction that carries the request's READ ONLY mode and timeouts, and
  with it /v1/transaction's all-or-nothing promise. SAVEPOINT, RELEASE and ROLLBACK TO stay.
- COPY to or from the client (STDIN, STDOUT): the HTTP API has no copy channel.
- what reaches other keys or every later session: pg_terminate_backend, pg_cancel_backend,
  pg_promote; ALTER ROLE / USER (a login may change its own password and defaults), ALTER
  DATABASE ... SET, ALTER SYSTEM; writing to pg_settings (set_config in disguise); and code
  the tree cannot read, which could do all of that with the login's rights: DO blocks,
  CREATE FUNCTION / PROCEDURE (the service creates nothing; with pg_temp first on the
  search path even an unqualified one would be temporary) and calls into pg_temp, and
  definitions that bind functions by name (operators, aggregates, casts, conversions,
  operator classes, triggers, ...).
- advisory locks and lo_unlink() on a value that may vary row by row, or more than 4 to a
  statement: each value locked takes an entry of the server's shared lock table, which one
  statement could fill for every session (passes 41, 42).
- functions that run a query given as text, or read a relation named by a value (query_to_xml,
  table_to_xml, ts_stat, ...: app/sql/catalog.py), and set_config() with a computed name.
- setting what mirrorpool pins for every session (DateStyle, IntervalStyle, bytea_output,
  client_encoding, extra_float_digits, standard_conforming_strings, backslash_quote): values
  are encoded in those formats, and with standard_conforming_strings off the server would
  read a string literal differently from the parse tree.

Refused in a read-only request (a read key's, or one sent with read_only), on top of the
READ ONLY transaction PostgreSQL enforces: CALL (code the tree cannot read),
LISTEN, UNLISTEN, NOTIFY, COPY, LOAD, CHECKPOINT; SET without LOCAL; whatever would switch
the transaction to read-write; set_config() unless provably local; cursors WITH HOLD; and the
functions whose effects escape a READ ONLY transaction (app/sql/catalog.py: large objects,
advisory locks, notifications, other backends, server files, configuration, WAL,
statistics, dblink).
The read-only transaction is also rolled back, never committed (app/sql/transactions.py), so what
a function the tree cannot see into did inside it is undone.
"""

from __future__ import annotations

from app.sql import catalog
from app.sql.tree import Tree, kept_on_tree

_PREPARED = {
    "PrepareStmt": "PREPARE",
    "ExecuteStmt": "EXECUTE",
    "DeallocateStmt": "DEALLOCATE",
    "DiscardStmt": "DISCARD",
}
# Savepoints live and die inside the request's own transaction.
_SAVEPOINTS = frozenset({"TRANS_STMT_SAVEPOINT", "TRANS_STMT_RELEASE", "TRANS_STMT_ROLLBACK_TO"})
_SHARED = {
    "AlterRoleStmt": "ALTER ROLE",
    "AlterRoleSetStmt": "ALTER ROLE ... SET",
    "AlterDatabaseSetStmt": "ALTER DATABASE ... SET",
    # (a CONNECTION LIMIT 0 closes the database to every pool's new connections)
    "AlterDatabaseStmt": "ALTER DATABASE",
    "AlterDatabaseRefreshCollStmt": "ALTER DATABASE ... REFRESH COLLATION VERSION",
    "CreatedbStmt": "CREATE DATABASE",
    "DropdbStmt": "DROP DATABASE",
    # A schema named like the login comes first on the default search_path ("$user",
    # public): its tables and views would answer for the schema's in every key's session.
    "CreateSchemaStmt": "CREATE SCHEMA",
    # DROP OWNED BY the login revokes what was granted to it, default privileges included:
    # every table a migration makes after would be closed to every key.
    "DropOwnedStmt": "DROP OWNED",
    "ReassignOwnedStmt": "REASSIGN OWNED",
    "AlterDefaultPrivilegesStmt": "ALTER DEFAULT PRIVILEGES",
    "AlterSystemStmt": "ALTER SYSTEM",
}
# Statements a read-only request may not send: code the tree cannot read (DO, a procedure),
# notifications, files and programs, libraries. (Writes and DDL PostgreSQL refuses itself,
# with SQLSTATE 25006, in the READ ONLY transaction.)
_READ_ONLY_REFUSED_KINDS = {
    "CallStmt": "CALL",
    "ListenStmt": "LISTEN",
    "UnlistenStmt": "UNLISTEN",
    "NotifyStmt": "NOTIFY",
    "LoadStmt": "LOAD",
    "CopyStmt": "COPY",
    "CheckPointStmt": "CHECKPOINT",
}
# Definitions that bind existing functions by name (what they call, the tree does not see as a
# call): refused to every key, like temporary functions.
_BINDS_FUNCTIONS = {
    "DefineStmt": "CREATE OPERATOR / AGGREGATE / TYPE",
    "CreateCastStmt": "CREATE CAST",
    "CreateConversionStmt": "CREATE CONVERSION",
    "CreateTransformStmt": "CREATE TRANSFORM",
    "CreateOpClassStmt": "CREATE OPERATOR CLASS",
    "CreateOpFamilyStmt": "CREATE OPERATOR FAMILY",
    "AlterOpFamilyStmt": "ALTER OPERATOR FAMILY",
    "AlterOperatorStmt": "ALTER OPERATOR",
    "AlterTypeStmt": "ALTER TYPE ... SET",
    "CreateRangeStmt": "CREATE TYPE ... AS RANGE",
    "CreatePLangStmt": "CREATE LANGUAGE",
    "CreateFdwStmt": "CREATE FOREIGN DATA WRAPPER",
    "AlterFdwStmt": "ALTER FOREIGN DATA WRAPPER",
    "CreateTrigStmt": "CREATE TRIGGER",
    "CreateEventTrigStmt": "CREATE EVENT TRIGGER",
    "CreateAmStmt": "CREATE ACCESS METHOD",
}

# Calls of catalog.VALUE_LOCKS one statement may make (MIRRORPOOL_MAX_STATEMENTS of them,
# 100 by default, take 400 values at most).
MAX_VALUE_LOCKS = 4
# Sequences and indexes one statement may make: each takes about three entries of the
# server's shared lock table until the transaction ends (MIRRORPOOL_MAX_STATEMENTS such
# statements, 100 by default, held 1,500 to 1,700 entries; a temporary table of 16 serial
# columns takes 52, and 14 of 1,600 filled the table).
MAX_OBJECTS_MADE = 4
# Savepoints mirrorpool sets itself (app/sql/session.py READ_ONLY_SAVEPOINT).
RESERVED_SAVEPOINTS = "mirrorpool"
_READ_ONLY_SETTINGS = frozenset({"transaction_read_only", "default_transaction_read_only"})
_TRANSACTION_CONTROL = (
    "is refused: a request runs inside a transaction mirrorpool opens and closes itself "
    "(with its read-only mode and timeouts); send several statements to /v1/transaction, "
    "and use SAVEPOINT / ROLLBACK TO SAVEPOINT inside it"
)


def ends_transaction(tree: Tree) -> bool:
    """True for a statement that begins or ends a transaction (BEGIN, COMMIT, ROLLBACK,
    PREPARE TRANSACTION, COMMIT / ROLLBACK PREPARED), not for savepoints."""
    return tree.transaction is not None and tree.transaction not in _SAVEPOINTS


def refusal(tree: Tree, read_only: bool) -> str | None:
    """Why the statement may not run here, or None when it may."""
    return _refusal_read_only(tree) if read_only else _refusal_any(tree)


@kept_on_tree
def _refusal_any(tree: Tree) -> str | None:
    return _always(tree)


@kept_on_tree
def _refusal_read_only(tree: Tree) -> str | None:
    return _always(tree) or _read_only(tree)


def _always(tree: Tree) -> str | None:  # noqa: PLR0911 - one return per rule
    if ends_transaction(tree):
        return f"{statement_verb(tree)} {_TRANSACTION_CONTROL}"
    if tree.savepoint is not None and tree.savepoint.startswith(RESERVED_SAVEPOINTS):
        return (
            f"savepoint names starting with {RESERVED_SAVEPOINTS!r} are mirrorpool's own "
            "(they carry the request's transaction); choose another name"
        )
    prepared = next((verb for kind, verb in _PREPARED.items() if kind in tree.kinds), None)
    if prepared is not None:
        return (
            f"{prepared} is refused: mirrorpool prepares statements on its pooled connections "
            "itself; send the statement with its parameters"
        )
    if tree.copy == "client":
        return (
            "COPY to or from the client is refused: HTTP has no copy channel; use "
            "/v1/query/stream to read many rows, and INSERT ... SELECT unnest($1) to write them"
        )
    binding = next((what for kind, what in _BINDS_FUNCTIONS.items() if kind in tree.kinds), None)
    if binding is not None:
        return (
            f"{binding} is refused: it calls functions named in its definition, which the "
            "parse tree does not follow (an operator or an aggregate can be any function "
            "under another name); define it in a migration"
        )
    settings_view = {(None, "pg_settings"), ("pg_catalog", "pg_settings")}
    reads_only = tree.kind == "SelectStmt" and not tree.writes
    if tree.written & settings_view or (tree.relations & settings_view and not reads_only):
        return (
            "writing to pg_settings, or naming it in anything but a query, is refused: an "
            "update of it is set_config() for the session (a view over it passes the update "
            "on), other keys' next requests included; use SET LOCAL"
        )
    temp_call = any(len(c) > 1 and c[-2].startswith("pg_temp") for c in tree.calls)
    if tree.kinds & {"DoStmt", "CreateFunctionStmt"} or temp_call:
        return (
            "DO blocks, CREATE FUNCTION / PROCEDURE and calls into pg_temp are refused: "
            "their bodies are code the parse tree cannot read, and they would run with the "
            "login's rights over every key's sessions (its password and defaults, the "
            "others' backends); ask the schema's owner for a function, made by a migration"
        )
    pinned = _pinned_refusal(tree)
    if pinned is not None:
        return pinned
    if any(call.name is None for call in tree.set_configs):
        return "set_config() needs the setting's name written out, not computed or a parameter"
    shared = next((what for kind, what in _SHARED.items() if kind in tree.kinds), None)
    shared = shared or _renames_database(tree)
    if shared is not None:
        return (
            f"{shared} is refused: it changes the login or the server for every later "
            "session, other keys' included; run it as a migration or as an administrator"
        )
    filling = _fills_lock_table(tree)
    if filling is not None:
        return filling
    reaching = sorted(tree.maybe_called & catalog.ALWAYS_REFUSED)
    if reaching:
        return (
            f"{reaching[0]}() is refused: it reaches other sessions or the cluster's roles, "
            "which keys sharing this service must not"
        )
    return _shared_views(tree)


def _fills_lock_table(tree: Tree) -> str | None:
    """Why a statement may take too many entries of the server's shared lock table, which
    every session shares (passes 41 and 42), or None."""
    if (
        tree.value_locks > MAX_VALUE_LOCKS
        or tree.value_locks_vary
        or tree.attributes & catalog.VALUE_LOCKS
    ):
        return (
            f"advisory locks and lo_unlink() are taken at most {MAX_VALUE_LOCKS} to a "
            "statement, each on a value that is the same on every row (constants, "
            "parameters, hashtext() of them): each value locked takes an entry of the "
            "server's shared lock table, which locking every row's would fill for every "
            "session, other keys' included; lock rows with SELECT ... FOR UPDATE SKIP "
            "LOCKED instead, and unlink large objects a few to a statement"
        )
    if tree.copies_objects:
        return (
            "LIKE ... INCLUDING INDEXES, IDENTITY or ALL makes as many indexes and sequences "
            "as the table copied has, and a copy of a copy more again; each takes an entry of "
            "the server's shared lock table until the transaction ends, which enough of them "
            "would fill for every session, other keys' included: name the indexes the copy "
            f"needs (at most {MAX_OBJECTS_MADE} to a statement), INCLUDING ALL EXCLUDING "
            "INDEXES EXCLUDING IDENTITY, or run it as a migration"
        )
    if tree.objects_made > MAX_OBJECTS_MADE:
        return (
            f"this statement makes {tree.objects_made} sequences and indexes (serial and "
            "identity columns, primary keys, unique and exclusion constraints); at most "
            f"{MAX_OBJECTS_MADE} are made to a statement: each takes an entry of the server's "
            "shared lock table until the transaction ends, which enough of them would fill "
            "for every session, other keys' included; run larger DDL as a migration"
        )
    return None


def _shared_views(tree: Tree) -> str | None:
    """What shows other requests of a shared connection: its prepared statements, its
    statistics not flushed yet."""
    refused = sorted(n for _, n in tree.relations if n in catalog.ALWAYS_REFUSED_RELATIONS)
    if "pg_prepared_statements" in refused:
        return (
            "pg_prepared_statements is refused: it lists the statements mirrorpool prepared "
            "on a shared connection, other keys' SQL among them"
        )
    pending = refused or sorted(
        n for n in tree.maybe_called if n.startswith(catalog.PENDING_STATISTICS_PREFIX)
    )
    if pending:
        return (
            f"{pending[0]} is refused: until the server flushes them it shows the counts of "
            "earlier requests on a shared connection, other keys' among them; read "
            "pg_stat_user_tables instead"
        )
    return None


def _renames_database(tree: Tree) -> str | None:
    """ALTER DATABASE ... RENAME TO / OWNER TO, ALTER SCHEMA ... RENAME TO / OWNER TO."""
    body = tree.node.get(tree.kind, {})
    target = body.get("renameType") or body.get("objectType")
    if tree.kind in ("RenameStmt", "AlterOwnerStmt") and target in (
        "OBJECT_DATABASE",
        "OBJECT_SCHEMA",
    ):
        what = "DATABASE" if target == "OBJECT_DATABASE" else "SCHEMA"
        return f"ALTER {what} ... {'RENAME' if tree.kind == 'RenameStmt' else 'OWNER'}"
    return None


def _pinned_refusal(tree: Tree) -> str | None:
    pinned = _pinned(tree)
    if pinned == "seed":
        return (
            "seed may not be set: it seeds random() for the whole session and no reset undoes "
            "it, so other keys' random() would follow it; call setseed() instead (mirrorpool "
            "then closes the connection after the request)"
        )
    if pinned is not None:
        return (
            f"{pinned} may not be set: mirrorpool pins it for every session (values are "
            "encoded in its formats, and statements read as PostgreSQL reads them)"
        )
    return None


def _pinned(tree: Tree) -> str | None:
    """The pinned setting (app/sql/catalog.py) a statement would change, if any."""
    for setting in tree.settings:
        names = setting.options | {setting.name or ""}
        # (TO DEFAULT and RESET too: behind PgBouncer they reach the server's own default)
        if setting.kind != "VAR_RESET_ALL" and (found := names & catalog.PINNED_SETTINGS):
            return min(found)
    for call in tree.set_configs:
        if call.name in catalog.PINNED_SETTINGS:
            return call.name
    return None


def _read_only(tree: Tree) -> str | None:  # noqa: PLR0911 - one return per rule
    refused = next((v for k, v in _READ_ONLY_REFUSED_KINDS.items() if k in tree.kinds), None)
    if refused is not None:
        return (
            f"{refused} is refused in a read-only request: what it runs or leaves behind "
            "reaches past a READ ONLY transaction"
        )
    for setting in tree.settings:
        if setting.name == "session characteristics" or (
            _READ_ONLY_SETTINGS & (setting.options | {setting.name or ""})
        ):
            return "a read-only request cannot change its transaction's access mode"
        if not setting.local and setting.kind != "VAR_SET_MULTI":
            return (
                "a read-only request cannot change its session's settings: use SET LOCAL, "
                "which lasts until the end of the request's transaction"
            )
    if tree.hold_cursor:
        return "a read-only request cannot declare a cursor WITH HOLD (it outlives the request)"
    for call in tree.set_configs:
        if not call.local or call.name in _READ_ONLY_SETTINGS:
            return (
                "a read-only request may call set_config() only with a named setting and "
                "true as its third argument (local to the request's transaction)"
            )
    functions = sorted(
        n for n in tree.maybe_called if n != "set_config" and catalog.refused_for_read_only(n)
    )
    if functions:
        return (
            f"{functions[0]}() is refused in a read-only request: its effects reach past a "
            "READ ONLY transaction (large objects, locks, notifications, other sessions, "
            "server files or settings)"
        )
    return None


def statement_verb(tree: Tree) -> str:
    """How the statement is usually written: COMMIT, CREATE TABLE, ... (from its kind)."""
    if tree.transaction is not None:
        words = tree.transaction.removeprefix("TRANS_STMT_").replace("_", " ")
        return {"PREPARE": "PREPARE TRANSACTION", "START": "START TRANSACTION"}.get(words, words)
    return _KIND_WORDS.get(tree.kind, tree.kind.removesuffix("Stmt") or "the statement")


_KIND_WORDS = {
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "DoStmt": "DO",
    "CallStmt": "CALL",
    "CopyStmt": "COPY",
    "ListenStmt": "LISTEN",
    "UnlistenStmt": "UNLISTEN",
    "NotifyStmt": "NOTIFY",
    "LoadStmt": "LOAD",
    "CreateStmt": "CREATE TABLE",
    "CreateTableAsStmt": "CREATE TABLE AS",
    "LockStmt": "LOCK",
    "TruncateStmt": "TRUNCATE",
    "VacuumStmt": "VACUUM / ANALYZE",
}
