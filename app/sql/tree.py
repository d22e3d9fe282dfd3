"""Statements as PostgreSQL's own parser reads them (pglast: libpg_query, the server's parser
as a library), reduced to the facts mirrorpool decides from.

Every security and session decision (app/sql/refusals.py, app/sql/session.py,
app/sql/transaction_pooling.py, the multiplexing lanes, migration plans) reads a `Tree`, never
the SQL's words: the parser has already decoded quoted and `U&` identifiers, dropped comments,
told string literals from code and qualified names by schema, so no spelling of a statement
reads as another. Each distinct text is parsed once (the cache below); services send the same
texts again and again.

What a tree cannot show is what runs out of sight: the body of a function or a `DO` block,
dynamic SQL, a view's definition, a trigger. The rules built on these facts treat such
statements as not provably harmless, and PostgreSQL itself (logins, grants, READ ONLY)
enforces the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
from pglast import ast as pg_ast
from pglast import parser as pg_parser

from app.errors import DatabaseError, InvalidSQL, LimitExceeded
from app.sql.catalog import CLEAN_FUNCTIONS, catalog_or_dblink

# DeclareCursorStmt.options bit of WITH HOLD (src/include/nodes/parsenodes.h).
CURSOR_OPT_HOLD = 0x0020
# Statements whose parse trees are kept, and the longest text that is cached.
CACHE_SIZE = 4096
CACHEABLE_LENGTH = 16384
# The largest parse tree read, as libpg_query's JSON: some forty times the text for the
# densest statements (8,000 select targets in 16 KB give 1.6 MB), more than any statement
# an application sends; past it the statement is refused before its tree is built.
MAX_TREE_JSON = 16 * 1024 * 1024
# The statements whose raw tree a rule reads past the facts (app/sql/refusals.py,
# app/sql/transaction_pooling.py); every other tree keeps only its facts, so a cached tree
# costs about as much as its text.
_KEEP_NODE = frozenset({"RenameStmt", "AlterOwnerStmt", "AlterSeqStmt"})

Name = tuple[str, ...]
# The data-changing statements, wherever they sit (a CTE, EXPLAIN ANALYZE, a rule).
_WRITES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
# Functions whose last argument says whether the setting lasts for the transaction only.
_SET_CONFIG = "set_config"
_VETTED = CLEAN_FUNCTIONS | {_SET_CONFIG}
# Nodes that pglast's parser (PostgreSQL 18) makes of what older servers read as calls.
_SQL_JSON_CALLS = {
    "JsonParseExpr": "json",
    "JsonScalarExpr": "json_scalar",
    "JsonSerializeExpr": "json_serialize",
    "JsonObjectConstructor": "json_object",
    "JsonArrayConstructor": "json_array",
    "JsonArrayQueryConstructor": "json_array",
    "JsonObjectAgg": "json_objectagg",
    "JsonArrayAgg": "json_arrayagg",
    "JsonTable": "json_table",
    "MergeSupportFunc": "merge_action",
    "JsonFuncExpr": None,  # by its op
}
_JSON_FUNC_OPS = {
    "JSON_EXISTS_OP": "json_exists",
    "JSON_QUERY_OP": "json_query",
    "JSON_VALUE_OP": "json_value",
}
# Nodes naming an operator or a type, and the field that holds the name.
_NAMED_BY = {"A_Expr": "name", "TypeName": "names"}
_NAMES = frozenset({"A_Indirection", "ColumnRef", *_NAMED_BY})
_TRUE_TEXTS = frozenset({"t", "true", "y", "yes", "on", "1"})
_FALSE_TEXTS = frozenset({"f", "false", "n", "no", "off", "0"})


@dataclass(frozen=True, slots=True)
class SetConfig:
    """One set_config() call: the setting's name and value (None when computed) and whether
    it is provably local to the transaction (its third argument the literal true)."""

    name: str | None
    local: bool
    value: str | None = None


@dataclass(frozen=True, slots=True)
class Setting:
    """One SET / RESET statement: its kind (VAR_SET_VALUE, VAR_RESET_ALL, ...), the setting
    it names (None for RESET ALL), whether it is LOCAL, the names inside SET TRANSACTION
    / SET SESSION CHARACTERISTICS (transaction_read_only, ...), and its values as written
    (None for one that is not a literal)."""

    kind: str
    name: str | None
    local: bool
    options: frozenset[str]
    values: tuple[str | None, ...] = ()


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
    # The relations an INSERT, UPDATE, DELETE or MERGE writes to, wherever it sits.
    written: frozenset[tuple[str | None, str]]
    # Their bare names, and every name that may call a function of the database's own
    # (attributes, unqualified calls): what app/sql/schema_code.py matches the catalog with.
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

    @property
    def unvetted_calls(self) -> frozenset[Name]:
        """Calls that are not to a vetted catalog function (app/sql/catalog.py): what they
        run, and what it leaves behind, cannot be read from the tree. (set_config() is read
        from the tree itself: `set_configs` says whether each call is local.)"""
        return frozenset(c for c in self.calls if not is_catalog_call(c, _VETTED))


def is_catalog_call(call: Name, names: frozenset[str]) -> bool:
    """True when `call` reaches one of `names` in pg_catalog: unqualified (pg_catalog is
    searched first unless a request moves it, which is a session change itself) or
    qualified by pg_catalog (optionally after the database name)."""
    if call[-1] not in names:
        return False
    return len(call) == 1 or call[-2] == "pg_catalog"


def parse(sql: str) -> Tree:
    """The tree of one statement; InvalidSQL carrying PostgreSQL's own message and position
    when it does not parse, or when the text holds no statement or several."""
    if len(sql) <= CACHEABLE_LENGTH:
        return _cached(sql)
    return _parse_one(sql)


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


_cached = lru_cache(maxsize=CACHE_SIZE)(_parse_one)


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


def _typed_fields() -> dict[str, dict[str, str]]:
    """For each node type, its fields that hold one node of a fixed concrete type.

    pglast's JSON (libpg_query's) wraps a node in a one-key object naming its type only where
    the field may hold any node (Node*, lists); a field of a fixed type (CreateStmt.relation
    is a RangeVar*, CallStmt.funccall a FuncCall*) holds the bare fields. pglast's own AST
    classes say which fields those are.
    """
    classes = {
        name: cls
        for name, cls in vars(pg_ast).items()
        if isinstance(cls, type) and issubclass(cls, pg_ast.Node)
    }
    concrete = set(classes) - {"Node", "Expr"}
    typed: dict[str, dict[str, str]] = {}
    for name, cls in classes.items():
        slots = getattr(cls, "__slots__", None)
        if not isinstance(slots, dict):
            continue
        fields = {
            field: info.c_type[:-1]
            for field, info in slots.items()
            if info.c_type.endswith("*") and info.c_type[:-1] in concrete
        }
        if fields:
            typed[name] = fields
    return typed


_TYPED = _typed_fields()


def _nodes(root: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every node of a tree as (type, fields), depth first."""
    stack: list[tuple[str, dict[str, Any]]] = list(_wrapped(root))
    while stack:
        node_type, fields = stack.pop()
        yield node_type, fields
        typed = _TYPED.get(node_type, {})
        for key, value in fields.items():
            if isinstance(value, dict):
                bare = typed.get(key)
                if bare is not None:
                    stack.append((bare, value))
                else:
                    stack.extend(_wrapped(value))
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        stack.extend(_wrapped(item))


def _wrapped(value: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The node a `{"Type": {fields}}` object holds (none for a bare value)."""
    for key, fields in value.items():
        if key[:1].isupper() and isinstance(fields, dict):
            yield key, fields


def _strings(items: list[Any] | None) -> Name:
    """A qualified name from a list of String nodes."""
    return tuple(i["String"]["sval"] for i in items or () if "String" in i)


def _const_text(node: dict[str, Any] | None) -> str | None:
    """The text of a string constant (also under a cast), else None."""
    if not node:
        return None
    if "TypeCast" in node:
        return _const_text(node["TypeCast"].get("arg"))
    const = node.get("A_Const")
    if const is not None and "sval" in const:
        return str(const["sval"].get("sval", ""))
    return None


def _is_true(node: dict[str, Any] | None) -> bool:
    """The literal true: `true`, or a string PostgreSQL reads as true (`'on'`, `'t'`...)."""
    if not node:
        return False
    const = node.get("A_Const")
    if const is not None and "boolval" in const:
        return bool(const["boolval"].get("boolval", False))
    text = _const_text(node)
    return text is not None and text.strip().lower() in _TRUE_TEXTS


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


def _is_temp_schema(name: str | None) -> bool:
    return name is not None and name.startswith("pg_temp")


@dataclass
class _Collect:
    top: dict[str, Any]
    kinds: set[str]
    calls: set[Name]
    attributes: set[str]
    # Operators and type names: what may run code of the database's own without a call.
    operators: set[str]
    relations: set[tuple[str | None, str]]
    written: set[tuple[str | None, str]]
    set_configs: list[SetConfig]
    settings: list[Setting]
    temp: bool = False
    hold_cursor: bool = False
    locks: bool = False
    writes: bool = False


def _facts(stmt: dict[str, Any], *, keep_node: bool) -> Tree:
    kind = next(iter(stmt), "")
    body = stmt.get(kind, {})
    seen = _Collect(body, set(), set(), set(), set(), set(), set(), [], [])
    for node_type, fields in _nodes(stmt):
        seen.kinds.add(node_type)
        _note(node_type, fields, seen)
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
        writes=seen.writes or bool(seen.kinds & _WRITES),
        no_transaction=_no_transaction(kind, body),
        answers_rows=_answers_rows(kind, body),
        node=stmt if keep_node or kind in _KEEP_NODE else {},
    )


def _note(node_type: str, fields: dict[str, Any], seen: _Collect) -> None:
    """Record what one node says."""
    if node_type in _SQL_JSON_CALLS:
        # SQL/JSON syntax of PostgreSQL 16 and later: a server of 15 reads the same text as a
        # call, to whatever function of that name the search path finds.
        op = fields.get("op", "")
        seen.calls.add((_SQL_JSON_CALLS[node_type] or _JSON_FUNC_OPS.get(op, "json_value"),))
    if node_type == "FuncCall":
        _note_call(fields, seen)
    elif node_type == "RangeVar":
        schema = fields.get("schemaname")
        seen.relations.add((schema, fields.get("relname", "")))
        if fields.get("relpersistence") == "t" or _is_temp_schema(schema):
            seen.temp = True
    elif node_type in _NAMES:
        _note_names(node_type, fields, seen)
    elif node_type in _WRITES:
        target = fields.get("relation") or {}
        seen.written.add((target.get("schemaname"), target.get("relname", "")))
    elif node_type == "LockingClause":
        seen.locks = True
    elif node_type == "IntoClause":
        seen.writes = True
    elif node_type == "VariableSetStmt" and fields is seen.top:
        # (only the statement itself: one inside ALTER ROLE / SYSTEM / FUNCTION ... SET sets
        # nothing for this session)
        seen.settings.append(_setting(fields))
    elif node_type == "DeclareCursorStmt":
        seen.hold_cursor |= bool(int(fields.get("options", 0)) & CURSOR_OPT_HOLD)
    if not seen.temp and _names_temp(fields):
        seen.temp = True


def _note_names(node_type: str, fields: dict[str, Any], seen: _Collect) -> None:
    """Names that may reach code of the database's own without a call of it written."""
    if node_type == "A_Indirection":
        seen.attributes.update(_strings(fields.get("indirection")))
    elif node_type == "ColumnRef":
        seen.attributes.update(_strings(fields.get("fields"))[1:])
    else:
        # an operator runs its function, a type its casts and checks: one of the
        # database's own is matched by name (app/sql/schema_code.py)
        named = _strings(fields.get(_NAMED_BY[node_type]))
        if named:
            seen.operators.add(named[-1])


def _note_call(fields: dict[str, Any], seen: _Collect) -> None:
    name = _strings(fields.get("funcname"))
    seen.calls.add(name)
    if name and name[-1] == _SET_CONFIG:
        args = fields.get("args") or []
        setting = _const_text(args[0]) if args else None
        local = len(args) == 3 and _is_true(args[2])
        value = _const_text(args[1]) if len(args) > 1 else None
        seen.set_configs.append(SetConfig(setting.lower() if setting else None, local, value))


def _setting(fields: dict[str, Any]) -> Setting:
    args = fields.get("args") or ()
    options = frozenset(str(o["DefElem"].get("defname", "")) for o in args if "DefElem" in o)
    setting = fields.get("name")
    return Setting(
        fields.get("kind", ""),
        str(setting).lower() if setting else None,
        bool(fields.get("is_local")),
        options,
        tuple(_const_text(a) for a in args if "DefElem" not in a),
    )


def _names_temp(fields: dict[str, Any]) -> bool:
    """True when a node names something in the session's temporary schema: a qualified name
    (a list of String nodes: a domain, type, function, conversion, operator ...) or a target
    schema (ALTER ... SET SCHEMA) in pg_temp. PostgreSQL looks relations and types up there
    first, so whatever is created there shadows the database's own for this session."""
    for key, value in fields.items():
        if isinstance(value, list) and len(value) > 1:
            name = [item["String"].get("sval") for item in value if "String" in item]
            if len(name) == len(value) and any(_is_temp_schema(n) for n in name[:-1]):
                return True
        elif key in ("newschema", "schemaname") and _is_temp_schema(
            value if isinstance(value, str) else None
        ):
            return True
    return False


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
