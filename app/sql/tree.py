"""Statements as PostgreSQL's own parser reads them (pglast: libpg_query, the server's parser
as a library), reduced to the facts mirrorpool decides from.

Every security and session decision (app/sql/refusals.py, app/sql/session.py,
app/sql/transaction_pooling.py, the multiplexing lanes, migration plans) reads a `Tree`, never
the SQL's words: the parser has already decoded quoted and `U&` identifiers, dropped comments,
told string literals from code and qualified names by schema, so no spelling of a statement
reads as another. Each distinct text is parsed once (the cache below); services send the same
texts again and again: the cache is bounded by count and by the names its trees hold
(TextCache). The walk over the raw tree that gathers the facts is in
app/sql/tree_walk.py.

What a tree cannot show is what runs out of sight: the body of a function or a `DO` block,
dynamic SQL, a view's definition, a trigger. The rules built on these facts treat such
statements as not provably harmless, and PostgreSQL itself (logins, grants, READ ONLY)
enforces the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

import orjson
from pglast import parser as pg_parser

from app.errors import DatabaseError, InvalidSQL, LimitExceeded
from app.sql.catalog import CLEAN_FUNCTIONS, catalog_or_dblink
from app.sql.text_cache import TextCache
from app.sql.tree_nodes import Name, makes_only_temporary
from app.sql.tree_walk import SET_CONFIG, SetConfig, Setting, walk

# The largest parse tree read, as libpg_query's JSON: some forty times the text for the
# densest statements (8,000 select targets in 16 KB give 1.6 MB), more than any statement
# an application sends; past it the statement is refused before its tree is built.
MAX_TREE_JSON = 16 * 1024 * 1024
# The statements whose raw tree a rule reads past the facts (app/sql/refusals.py,
# app/sql/transaction_pooling.py); every other tree keeps only its facts, so a cached tree
# costs about as much as its text.
_KEEP_NODE = frozenset({"RenameStmt", "AlterOwnerStmt", "AlterSeqStmt"})
_MAKES_RELATION = frozenset({"CreateStmt", "CreateTableAsStmt", "ViewStmt", "CompositeTypeStmt"})

_VETTED = CLEAN_FUNCTIONS | {SET_CONFIG}
T = TypeVar("T")
_FALSE_TEXTS = frozenset({"f", "false", "n", "no", "off", "0"})


@dataclass(frozen=True, slots=True, eq=False)
class Tree:
    """The facts of one statement's parse tree that mirrorpool's rules read."""

    # The statement's node type: "SelectStmt", "InsertStmt", "VariableSetStmt", ...
    kind: str
    # Every node type anywhere in the tree (a DELETE in a CTE, a SELECT inside EXPLAIN).
    kinds: frozenset[str]
    # Every function called by name, as written: ("lower",), ("pg_catalog", "lo_create").
    calls: frozenset[Name]
    # The called functions' own names, whatever schema qualifies them, and the names that
    # PostgreSQL may read as calls in attribute notation: `(expr).f` and `alias.f` are f(expr)
    # and f(alias) when there is no such field or column.
    names: frozenset[str]
    attributes: frozenset[str]
    # Every name the statement may call a catalog function by: its calls, and its attributes
    # named like one (app/sql/catalog.py catalog_or_dblink).
    maybe_called: frozenset[str]
    # Every table, view or sequence named: (schema or None, name).
    relations: frozenset[tuple[str | None, str]]
    # The relations an INSERT, UPDATE, DELETE or MERGE writes to, wherever it sits, and the
    # ones a TRUNCATE empties.
    written: frozenset[tuple[str | None, str]]
    # Their bare names, and every name that may call a function of the database's own
    # (attributes, unqualified calls, operators, type names): what app/sql/schema_code.py
    # matches the catalog with.
    relation_names: frozenset[str]
    written_names: frozenset[str]
    own_call_names: frozenset[str]
    set_configs: tuple[SetConfig, ...]
    settings: tuple[Setting, ...]
    # TransactionStmt kind: TRANS_STMT_BEGIN, TRANS_STMT_SAVEPOINT, ...
    transaction: str | None
    # The savepoint a SAVEPOINT, RELEASE or ROLLBACK TO names.
    savepoint: str | None
    # COPY: "client" (STDIN/STDOUT), "file" or "program"; None when not a COPY.
    copy: str | None
    # A temporary object is created (TEMP, or a name in pg_temp).
    temp: bool
    # A cursor is declared WITH HOLD (it outlives its transaction).
    hold_cursor: bool
    # Rows are locked (FOR UPDATE / SHARE ...).
    locks: bool
    # Data is changed or a table is created from a query (SELECT INTO, CREATE TABLE AS).
    writes: bool
    # Why the statement cannot run inside a transaction block, or None when it can.
    no_transaction: str | None
    # Whether the statement answers with rows (returns_rows below).
    answers_rows: bool | None
    # The raw tree (pglast's JSON form) for rules that need more: migration plans (every
    # statement of parse_all) and the few kinds in _KEEP_NODE; {} for the others.
    node: dict[str, Any] = field(repr=False)
    # The rules' verdicts on this tree, each worked out once (kept_on_tree below): they go
    # when the tree goes, so a statement whose tree the parse cache does not keep (a text
    # over CACHEABLE_LENGTH) leaves nothing behind.
    verdicts: dict[Callable[..., Any], Any] = field(default_factory=dict, repr=False)
    # Calls of VALUE_LOCKS (advisory locks, lo_unlink), and whether one may lock a value
    # that varies row by row.
    value_locks: int = 0
    value_locks_vary: bool = False
    # Every function called by its own name (but pg_catalog's): (name, calls, whether one's
    # arguments may vary from row to row). What app/sql/lock_code.py counts by.
    call_sites: frozenset[tuple[str, int, bool]] = frozenset()
    # Sequences and indexes the statement makes (serial and identity columns, primary keys,
    # unique and exclusion constraints, CREATE SEQUENCE / INDEX).
    objects_made: int = 0
    # LIKE ... INCLUDING INDEXES / IDENTITY / ALL: as many more as the relation copied has.
    copies_objects: bool = False
    # A table, view or composite type is made (CREATE TABLE / VIEW / TYPE ... AS, CREATE
    # TABLE AS, SELECT ... INTO): 1, else 0.
    makes_relation: int = 0
    # ALTER TABLE commands that rewrite a table, CLUSTER, REFRESH MATERIALIZED VIEW.
    rewrites: int = 0
    # A temporary table or sequence is all the statement makes (CREATE TEMP TABLE / SEQUENCE
    # with no parent, no owning column, no call): nothing outside its session can reach it.
    temp_only: bool = False

    @property
    def weight(self) -> int:
        """How much the tree's facts hold, in names: what the parse cache is bounded by."""
        return (
            1
            + len(self.calls)
            + len(self.names)
            + len(self.attributes)
            + len(self.maybe_called)
            + len(self.relations)
            + len(self.written)
            + len(self.relation_names)
            + len(self.written_names)
            + len(self.own_call_names)
            + len(self.set_configs)
            + len(self.settings)
            + len(self.call_sites)
        )

    @property
    def unvetted_calls(self) -> frozenset[Name]:
        """Calls that are not to a vetted catalog function (app/sql/catalog.py): what they
        run, and what it leaves behind, cannot be read from the tree. (set_config() is read
        from the tree itself: `set_configs` says whether each call is local.)"""
        return frozenset(c for c in self.calls if not is_catalog_call(c, _VETTED))


def kept_on_tree(rule: Callable[[Tree], T]) -> Callable[[Tree], T]:
    """`rule`, worked out once per tree and kept on it (Tree.verdicts): a cached statement's
    verdict costs a dict lookup, and lasts exactly as long as its tree, which the parse cache
    bounds (a cache keyed by the tree would keep every long statement's tree instead)."""

    @wraps(rule)
    def verdict(tree: Tree) -> T:
        try:
            found: T = tree.verdicts[rule]
        except KeyError:
            found = tree.verdicts[rule] = rule(tree)
        return found

    return verdict


def is_catalog_call(call: Name, names: frozenset[str]) -> bool:
    """True when `call` reaches one of `names` in pg_catalog: unqualified (pg_catalog is
    searched first unless a request moves it, which is a session change itself) or
    qualified by pg_catalog (optionally after the database name)."""
    if call[-1] not in names:
        return False
    return len(call) == 1 or call[-2] == "pg_catalog"


def _tree_weight(tree: Tree) -> int:
    return tree.weight


_trees: TextCache[Tree] = TextCache(_tree_weight)
_kept = _trees.get


def parse(sql: str) -> Tree:
    """The tree of one statement; InvalidSQL carrying PostgreSQL's own message and position
    when it does not parse, or when the text holds no statement or several."""
    tree = _kept(sql)
    if tree is None:
        tree = _parse_one(sql)
        _trees.keep(sql, tree)  # (not a text over CACHEABLE_LENGTH)
    return tree


def parse_all(sql: str) -> list[Tree]:
    """The trees of every statement in a script (a migration file), in order."""
    return [_facts(stmt.get("stmt", {}), keep_node=True) for stmt in _raw(sql)]


def statement_starts(sql: str) -> list[int]:
    """Where each statement of a script starts (a character offset), as the parser splits."""
    try:
        return [piece.start for piece in pg_parser.split(sql, only_slices=True)]
    except pg_parser.ParseError as exc:
        raise syntax_error(exc) from None


def _parse_one(sql: str) -> Tree:
    statements = _raw(sql)
    if not statements:
        raise InvalidSQL("the SQL is empty")
    if len(statements) > 1:
        raise InvalidSQL(
            "the SQL holds more than one statement; send one per request (or use /v1/transaction)"
        )
    return _facts(statements[0].get("stmt", {}), keep_node=False)


def _raw(sql: str) -> list[dict[str, Any]]:
    try:
        text = pg_parser.parse_sql_json(sql)
    except pg_parser.ParseError as exc:
        raise syntax_error(exc) from None
    if len(text) > MAX_TREE_JSON:
        raise LimitExceeded(
            f"the statement's parse tree is over {MAX_TREE_JSON // 2**20} MB; send fewer "
            "expressions per statement (or their values as parameters)"
        )
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:  # deeper than orjson reads (1024 levels)
        raise LimitExceeded("the statement nests too deeply to be read") from None
    statements: list[dict[str, Any]] = parsed.get("stmts", [])
    return statements


def syntax_error(exc: pg_parser.ParseError) -> DatabaseError:
    """PostgreSQL's syntax error, as the server itself would have answered it: its message,
    SQLSTATE 42601 and the 1-based character position."""
    message = str(exc.args[0]) if exc.args else str(exc)
    location = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
    database: dict[str, Any] = {"message": message}
    if location is not None and location >= 0:
        database["position"] = location + 1  # a character offset (pglast 8.8 and later)
    return DatabaseError(message, "42601", database=database)


def option_is_on(option: dict[str, Any]) -> bool:
    """A DefElem option's boolean value as PostgreSQL reads it (defGetBoolean): on when it has
    no value, or one of true, on, yes, 1 (any case)."""
    arg = option.get("arg")
    if not arg:
        return True
    if "Integer" in arg:
        return bool(arg["Integer"].get("ival", 0))
    if "Boolean" in arg:
        return bool(arg["Boolean"].get("boolval", False))
    text = (arg.get("String") or {}).get("sval")
    if text is None:
        const = arg.get("A_Const") or {}
        if "boolval" in const:
            return bool(const["boolval"].get("boolval", False))
        text = (const.get("sval") or {}).get("sval")
    return str(text).lower() not in _FALSE_TEXTS


def _facts(stmt: dict[str, Any], *, keep_node: bool) -> Tree:
    kind = next(iter(stmt), "")
    body = stmt.get(kind, {})
    seen = walk(stmt)
    transaction = body.get("kind") if kind == "TransactionStmt" else None
    savepoint = body.get("savepoint_name") if kind == "TransactionStmt" else None
    copy = None
    if kind == "CopyStmt":
        copy = "program" if body.get("is_program") else "file" if body.get("filename") else "client"
    return Tree(
        kind=kind,
        kinds=frozenset(seen.kinds),
        calls=frozenset(seen.calls),
        names=frozenset(call[-1] for call in seen.calls if call),
        attributes=frozenset(seen.attributes),
        maybe_called=frozenset(
            {call[-1] for call in seen.calls if call}
            | {a for a in seen.attributes if catalog_or_dblink(a)}
        ),
        relations=frozenset(seen.relations),
        written=frozenset(seen.written),
        relation_names=frozenset(name for _, name in seen.relations),
        written_names=frozenset(name for _, name in seen.written),
        own_call_names=frozenset(
            seen.attributes | seen.operators | {call[-1] for call in seen.calls if len(call) == 1}
        ),
        set_configs=tuple(seen.set_configs),
        settings=tuple(seen.settings),
        transaction=transaction,
        savepoint=savepoint,
        copy=copy,
        temp=seen.temp,
        hold_cursor=seen.hold_cursor,
        locks=seen.locks,
        writes=seen.writes,
        no_transaction=_no_transaction(kind, body),
        answers_rows=_answers_rows(kind, body),
        node=stmt if keep_node or kind in _KEEP_NODE else {},
        value_locks=seen.value_locks,
        value_locks_vary=seen.value_locks_vary,
        call_sites=frozenset((name, n, v) for name, (n, v) in seen.call_sites.items()),
        objects_made=seen.made,
        copies_objects=seen.copies,
        makes_relation=int(kind in _MAKES_RELATION or "IntoClause" in seen.kinds),
        rewrites=seen.rewrites,
        temp_only=not seen.calls and makes_only_temporary(kind, body),
    )


# Statements PostgreSQL never runs inside a transaction block, whatever their options.
_NEVER_IN_TRANSACTION = {
    "CreatedbStmt": "CREATE DATABASE",
    "DropdbStmt": "DROP DATABASE",
    "AlterSystemStmt": "ALTER SYSTEM",
    "CreateTableSpaceStmt": "CREATE TABLESPACE",
    "DropTableSpaceStmt": "DROP TABLESPACE",
    # (only when they create or drop a replication slot, which is their default)
    "CreateSubscriptionStmt": "CREATE SUBSCRIPTION",
    "DropSubscriptionStmt": "DROP SUBSCRIPTION",
}


def _no_transaction(kind: str, body: dict[str, Any]) -> str | None:
    """Why PostgreSQL refuses to run this statement inside a transaction block."""
    concurrently = bool(body.get("concurrent")) or any(
        option.get("defname") == "concurrently" and option_is_on(option)
        for option in (o.get("DefElem", {}) for o in body.get("params") or ())
    )
    whole = body.get("kind") in ("REINDEX_OBJECT_SYSTEM", "REINDEX_OBJECT_DATABASE")
    found = {
        "IndexStmt": "CREATE INDEX CONCURRENTLY" if concurrently else None,
        "DropStmt": "DROP INDEX CONCURRENTLY" if concurrently else None,
        "ReindexStmt": "REINDEX CONCURRENTLY"
        if concurrently
        else "REINDEX SYSTEM / DATABASE"
        if whole
        else None,
        "VacuumStmt": "VACUUM" if body.get("is_vacuumcmd") else None,
        "ClusterStmt": None if body.get("relation") else "CLUSTER without a table",
    }.get(kind)
    return found or _NEVER_IN_TRANSACTION.get(kind)


_DML = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
NO_ROWS_TO_STREAM = (
    "the statement returns no rows to stream (such as INSERT, UPDATE or DELETE without "
    "RETURNING, SET, or DDL): send it to POST /v1/query instead"
)


def returns_rows(tree: Tree) -> bool | None:
    """Whether the statement answers with rows, as its tree says: a query (not SELECT INTO),
    DML with RETURNING, EXPLAIN, SHOW, FETCH; not SET, DO, DDL, DML without RETURNING. None
    where only the server can tell (CALL: a row when the procedure has OUT parameters)."""
    return tree.answers_rows


def _answers_rows(kind: str, body: dict[str, Any]) -> bool | None:
    if kind == "SelectStmt":
        return "intoClause" not in body
    if kind in _DML:
        # (`returningList` up to PostgreSQL 17's grammar, `returningClause` from 18's)
        return bool(body.get("returningList") or (body.get("returningClause") or {}).get("exprs"))
    if kind == "FetchStmt":
        return not body.get("ismove")
    if kind in {"ExplainStmt", "VariableShowStmt"}:
        return True
    if kind in {"CallStmt", "ExecuteStmt"}:
        return None
    return False
