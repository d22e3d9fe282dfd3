"""Walking pglast's JSON form of a parse tree: its nodes, depth first, and the few readings
of a node that the walk (app/sql/tree_walk.py) and the lock rule (app/sql/lock_code.py)
share, and whether a CREATE makes only a temporary table or sequence (Tree.temp_only).

A node is wrapped in a one-key object naming its type except in the fields of a fixed node
type, which pglast's own AST classes name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pglast import ast as pg_ast

from app.sql.catalog import LOCK_KEY_FUNCTIONS

# A qualified name: ("pg_catalog", "lower"), ("lower",).
Name = tuple[str, ...]


def typed_fields() -> dict[str, dict[str, str]]:
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


_TYPED = typed_fields()


def nodes(root: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every node of a tree as (type, fields), depth first."""
    stack: list[tuple[str, dict[str, Any]]] = list(_wrapped(root))
    while stack:
        node_type, fields = stack.pop()
        yield node_type, fields
        stack.extend(children(node_type, fields))


def children(node_type: str, fields: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """A node's own child nodes as (type, fields), in order."""
    typed = _TYPED.get(node_type, {})
    for key, value in fields.items():
        if isinstance(value, dict):
            bare = typed.get(key)
            if bare is not None:
                yield bare, value
            else:
                yield from _wrapped(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    yield from _wrapped(item)


def _wrapped(value: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The node a `{"Type": {fields}}` object holds (none for a bare value)."""
    for key, fields in value.items():
        if key[:1].isupper() and isinstance(fields, dict):
            yield key, fields


def strings(items: list[Any] | None) -> Name:
    """A qualified name from a list of String nodes."""
    return tuple(i["String"]["sval"] for i in items or () if "String" in i)


# What a value that is the same on every row is made of: constants, parameters, operators,
# casts, and a few functions of one result (no column, subquery, set-returning function).
STEADY_NODES = frozenset(
    {
        "A_Const",
        "ParamRef",
        "TypeCast",
        "TypeName",
        "A_Expr",
        "String",
        "Integer",
        "Float",
        "Boolean",
        "BitString",
        "SQLValueFunction",
        "CollateClause",
        "BoolExpr",
        "NullTest",
        "CoalesceExpr",
        "FuncCall",
        "NamedArgExpr",  # `f(job => $1)`: the argument it names
    }
)


def steady(arg: dict[str, Any], allowed: frozenset[str] = STEADY_NODES) -> bool:
    """True when an expression has one value for the whole statement (what an advisory
    lock is taken on: a value that varies row by row takes an entry of the server's lock
    table for every row). `allowed`: the node types it may be made of."""
    for node_type, fields in nodes(arg):
        if node_type not in allowed:
            return False
        if node_type == "FuncCall":
            name = strings(fields.get("funcname"))
            if not name or name[-1] not in LOCK_KEY_FUNCTIONS or fields.get("over"):
                return False
    return True


def makes_only_temporary(kind: str, body: dict[str, Any]) -> bool:
    """A CREATE TEMP TABLE that inherits from no table, is no partition, names no access
    method (whose handler is code), copies nothing (LIKE, OF a type) and has columns of
    PostgreSQL's own types only, or a CREATE TEMP SEQUENCE owned by no column: what it makes
    lives in the session's temporary schema, and runs no code of the database's own (a
    domain's default or check, a type's input function on a default's literal: pass 47)."""
    if kind == "CreateStmt" and not (
        body.get("inhRelations")
        or body.get("partbound")
        or body.get("accessMethod")
        or body.get("ofTypename")
        or not all(_plain_element(element) for element in body.get("tableElts") or ())
    ):
        made = body.get("relation") or {}
    elif kind == "CreateSeqStmt" and not any(
        (option.get("DefElem") or {}).get("defname") == "owned_by"
        for option in body.get("options") or ()
    ):
        made = body.get("sequence") or {}
    else:
        return False
    return made.get("relpersistence") == "t" or made.get("schemaname") == "pg_temp"


# The names of PostgreSQL's own types that its parser leaves unqualified (the keyword types,
# int or varchar or timestamp with time zone, come out named pg_catalog.int4 and the like).
_CATALOG_TYPES = frozenset(
    {
        *("text", "name", "char", "date", "uuid", "json", "jsonb", "bytea", "xml", "money"),
        *("inet", "cidr", "macaddr", "macaddr8", "tsvector", "tsquery", "oid", "regclass"),
        *("point", "line", "lseg", "box", "path", "polygon", "circle", "timestamptz"),
        *("int2", "int4", "int8", "float4", "float8", "bool", "timetz", "varbit"),
        *("serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"),
        *("int4range", "int8range", "numrange", "tsrange", "tstzrange", "daterange"),
    }
)


def _plain_element(element: dict[str, Any]) -> bool:
    """A column of a catalog type (qualified with pg_catalog, or a name of _CATALOG_TYPES),
    or a table constraint (what it calls counts apart)."""
    if "Constraint" in element:
        return True
    type_name = (element.get("ColumnDef") or {}).get("typeName") or {}
    name = strings(type_name.get("names"))
    if type_name.get("pct_type") or not name:
        return False
    return name[:-1] == ("pg_catalog",) or (len(name) == 1 and name[0] in _CATALOG_TYPES)
