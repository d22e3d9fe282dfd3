"""The walk over one statement's raw parse tree (pglast's JSON form): every node, depth
first, and what each says, gathered into `Seen` for app/sql/tree.py to turn into a `Tree`.

The walk knows pglast's JSON: a node is wrapped in a one-key object naming its type except in
the fields of a fixed node type, which pglast's own AST classes name. What a node says is
recorded by its type: calls (also SQL/JSON syntax, which PostgreSQL 15 reads as calls),
relations named and written, attributes that may be calls, set_config() and SET, temporary
objects, WITH HOLD cursors, row locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.sql.catalog import VALUE_LOCKS
from app.sql.tree_nodes import Name, steady
from app.sql.tree_nodes import nodes as _nodes
from app.sql.tree_nodes import strings as _strings

# DeclareCursorStmt.options bit of WITH HOLD (src/include/nodes/parsenodes.h).
CURSOR_OPT_HOLD = 0x0020

# The data-changing statements, wherever they sit (a CTE, EXPLAIN ANALYZE, a rule).
_WRITES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
# Recorded among a tree's kinds for TRUNCATE ... CASCADE, which empties every table whose
# foreign keys reference the ones named, whatever their actions, running their triggers.
TRUNCATE_CASCADE = "TruncateStmt CASCADE"
# Functions whose last argument says whether the setting lasts for the transaction only.
SET_CONFIG = "set_config"
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
_TRUE_TEXTS = frozenset({"t", "true", "y", "yes", "on", "1"})


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


def _is_temp_schema(name: str | None) -> bool:
    return name is not None and name.startswith("pg_temp")


@dataclass
class Seen:
    """What the walk saw in one statement's tree."""

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
    # Calls of VALUE_LOCKS, and whether one's value may vary from row to row (steady).
    value_locks: int = 0
    value_locks_vary: bool = False
    # Every function called by its own name, but pg_catalog's: how many calls, and whether
    # one's arguments may vary from row to row (what app/sql/lock_code.py counts a call of
    # the database's own lock-taking functions by).
    call_sites: dict[str, tuple[int, bool]] = field(default_factory=dict)
    # Sequences and indexes the statement makes (objects_made), and whether it copies those
    # of another relation (copies_objects).
    made: int = 0
    copies: bool = False
    # Statements or commands that rewrite a table (rewrites).
    rewrites: int = 0


def walk(stmt: dict[str, Any]) -> Seen:
    """What every node of one statement's tree says (`stmt` is {"Type": {fields}})."""
    kind = next(iter(stmt), "")
    seen = Seen(stmt.get(kind, {}), set(), set(), set(), set(), set(), set(), [], [])
    for node_type, fields in _nodes(stmt):
        seen.kinds.add(node_type)
        _note(node_type, fields, seen)
    seen.writes = seen.writes or bool(seen.kinds & _WRITES)
    return seen


def _note_written(node_type: str, fields: dict[str, Any], seen: Seen) -> None:
    """The relations a DML statement writes, a TRUNCATE empties (its ON TRUNCATE triggers
    run), or a LIKE copies (_note_copied)."""
    if node_type == "TableLikeClause":
        _note_copied(fields, seen)
        return
    if node_type != "TruncateStmt":
        targets = [fields.get("relation") or {}]
    else:
        targets = [item.get("RangeVar") or {} for item in fields.get("relations") or ()]
        if fields.get("behavior") == "DROP_CASCADE":
            seen.kinds.add(TRUNCATE_CASCADE)
    for target in targets:
        seen.written.add((target.get("schemaname"), target.get("relname", "")))


def _note(node_type: str, fields: dict[str, Any], seen: Seen) -> None:
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
    elif node_type in _WRITES or node_type in ("TruncateStmt", "TableLikeClause"):
        _note_written(node_type, fields, seen)
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
    else:
        seen.made += _makes_one(node_type, fields)
        seen.rewrites += _rewrites(node_type, fields)
    if not seen.temp and _names_temp(fields):
        seen.temp = True


# Nodes naming an operator or a type, and the field that holds the name.
_NAMED_BY = {"A_Expr": "name", "TypeName": "names", "SortBy": "useOp"}
# Nodes for which PostgreSQL's analyser looks an operator up by a name the raw tree does not
# spell (make_op, oper), and those names:
# - `x BETWEEN a AND b` (an A_Expr named "BETWEEN"): `x >= a AND x <= b`, and for NOT
#   BETWEEN `x < a OR x > b`, SYMMETRIC or not (transformAExprBetween);
# - `CASE x WHEN y`: `x = y` for each WHEN (transformCaseExpr);
# - `x IN (SELECT ...)`: a SubLink of ANY with no operator named, `=` (transformSubLink;
#   one that names its operator, `x op ANY / ALL (SELECT ...)`, is read by its operName);
# - `JOIN ... USING (c)` and NATURAL JOIN: `=` for the columns' types
#   (transformJoinUsingClause).
# What the raw tree spells is recorded as written: `IN (list)` (an A_Expr named `=` or
# `<>`), NULLIF and IS DISTINCT FROM (`=`), LIKE, ILIKE and SIMILAR TO (`~~`, `~~*`, `~`),
# `op ANY / ALL (array)`, a row comparison, OPERATOR(schema.op), ORDER BY ... USING op.
# What PostgreSQL finds through a type's operator classes instead of by name (GROUP BY,
# DISTINCT, ORDER BY, UNION, GREATEST / LEAST, a merge or hash join, ON CONFLICT's arbiter,
# a window's RANGE offsets, array and record comparisons, a recursive CTE's CYCLE mark)
# needs no name: only a superuser
# can make an operator class, so those operators are the catalog's or a superuser's.
# (Every form that does look an operator up by name is a node of the raw tree, so its names
# are recorded where it is: treating an own `=`, `<`, ... as reached by every statement
# instead would reset the connection after every request, and share no lane, in any schema
# that has one.)
_BETWEEN = {
    "AEXPR_BETWEEN": (">=", "<="),
    "AEXPR_BETWEEN_SYM": (">=", "<="),
    "AEXPR_NOT_BETWEEN": ("<", ">"),
    "AEXPR_NOT_BETWEEN_SYM": ("<", ">"),
}
_NAMES = frozenset(
    {"A_Indirection", "ColumnRef", "CaseExpr", "SubLink", "JoinExpr"} | set(_NAMED_BY)
)


def _note_names(node_type: str, fields: dict[str, Any], seen: Seen) -> None:
    """Names that may reach code of the database's own without a call of it written."""
    if node_type == "A_Indirection":
        seen.attributes.update(_strings(fields.get("indirection")))
    elif node_type == "ColumnRef":
        seen.attributes.update(_strings(fields.get("fields"))[1:])
    elif node_type == "CaseExpr":
        if fields.get("arg"):
            seen.operators.add("=")
    elif node_type == "SubLink":
        named = _strings(fields.get("operName"))
        if named:
            seen.operators.add(named[-1])
        elif fields.get("subLinkType") == "ANY_SUBLINK":
            seen.operators.add("=")
    elif node_type == "JoinExpr":
        if fields.get("usingClause") or fields.get("isNatural"):
            seen.operators.add("=")
    else:
        seen.operators.update(_BETWEEN.get(fields.get("kind", ""), ()))
        # an operator runs its function, a type its casts and checks: one of the
        # database's own is matched by name (app/sql/schema_code.py)
        named = _strings(fields.get(_NAMED_BY[node_type]))
        if named:
            seen.operators.add(named[-1])


# What makes a sequence or an index, each of which a transaction holds an entry of the
# server's shared lock table for until it ends: CREATE SEQUENCE, CREATE INDEX, and a column
# or table constraint that PostgreSQL backs with an index or a sequence.
_MAKES_ONE = frozenset({"CreateSeqStmt", "IndexStmt"})
_CONSTRAINTS_MAKING = frozenset(
    {"CONSTR_PRIMARY", "CONSTR_UNIQUE", "CONSTR_EXCLUSION", "CONSTR_IDENTITY"}
)
# The type names PostgreSQL reads as a column with a sequence of its own, unqualified or in
# pg_catalog (transformColumnDefinition).
_SERIALS = frozenset({"smallserial", "serial2", "serial", "serial4", "bigserial", "serial8"})


# What LIKE ... INCLUDING copies one of for each the relation has (TableLikeOption).
_LIKE_IDENTITY, _LIKE_INDEXES = 1 << 5, 1 << 6


def _note_copied(fields: dict[str, Any], seen: Seen) -> None:
    """CREATE TABLE ... (LIKE r ...): the new table takes r's stored code (its defaults,
    generated columns, checks, index expressions), so r counts as written (its writes' code
    runs on the copy's, and the catalog reading never sees a temporary copy); with INCLUDING
    INDEXES or IDENTITY it makes as many indexes or sequences as r has, which the tree does
    not show (pass 44)."""
    target = fields.get("relation") or {}
    seen.written.add((target.get("schemaname"), target.get("relname", "")))
    if int(fields.get("options", 0)) & (_LIKE_IDENTITY | _LIKE_INDEXES):
        seen.copies = True


# What builds a new heap for the table (and for each partition) and new indexes: ALTER TABLE
# commands that rewrite it, CLUSTER, REFRESH MATERIALIZED VIEW (pass 45); and ATTACH
# PARTITION, which makes an index for each of the parent's on every relation it attaches
# (DETACH, DROP INDEX and ATTACH again made 56 a round: pass 47).
_REWRITING_COMMANDS = frozenset(
    {
        "AT_AlterColumnType",
        "AT_SetAccessMethod",
        "AT_SetLogged",
        "AT_SetUnLogged",
        "AT_AttachPartition",
    }
)
_REWRITING = frozenset({"ClusterStmt", "RefreshMatViewStmt"})
_DEFAULTING = frozenset({"CONSTR_DEFAULT", "CONSTR_GENERATED", "CONSTR_IDENTITY"})


def _rewrites(node_type: str, fields: dict[str, Any]) -> bool:
    """True when a node rewrites a table: each partition's heap and each index made anew, as
    many as the table has, which the tree does not show. A column added with a default (a
    serial one's is nextval()) counts whatever the default: a volatile one rewrites, and the
    tree cannot tell which."""
    if node_type in _REWRITING:
        return True
    if node_type != "AlterTableCmd":
        return False
    subtype = fields.get("subtype")
    if subtype in _REWRITING_COMMANDS:
        return True
    column = (fields.get("def") or {}).get("ColumnDef") or {}
    return subtype == "AT_AddColumn" and bool(
        column.get("raw_default")
        or _is_serial(column.get("typeName") or {})
        or any(
            (c.get("Constraint") or {}).get("contype") in _DEFAULTING
            for c in column.get("constraints") or ()
        )
    )


def _makes_one(node_type: str, fields: dict[str, Any]) -> bool:
    """True when a node makes a sequence or an index."""
    if node_type in _MAKES_ONE or fields.get("contype") in _CONSTRAINTS_MAKING:
        return True
    return node_type == "ColumnDef" and _is_serial(fields.get("typeName") or {})


def _is_serial(type_name: dict[str, Any]) -> bool:
    name = _strings(type_name.get("names"))
    return (
        bool(name)
        and name[-1] in _SERIALS
        and (len(name) == 1 or name[:-1] == ("pg_catalog",))
        and not type_name.get("arrayBounds")
    )


def _note_call(fields: dict[str, Any], seen: Seen) -> None:
    name = _strings(fields.get("funcname"))
    seen.calls.add(name)
    if not name:
        return
    if len(name) == 1 or name[0] != "pg_catalog" or name[-1] in VALUE_LOCKS:
        args = fields.get("args") or []
        varies = not all(steady(arg) for arg in args if isinstance(arg, dict))
        if name[-1] in VALUE_LOCKS:
            seen.value_locks += 1
            seen.value_locks_vary |= varies
        else:
            count, varied = seen.call_sites.get(name[-1], (0, False))
            seen.call_sites[name[-1]] = (count + 1, varied or varies)
    if name and name[-1] == SET_CONFIG:
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
