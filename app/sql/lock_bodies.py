"""What a function of the database's own calls, read from its code by PostgreSQL's parsers,
for the lock rule (app/sql/lock_code.py).

A body is read as PostgreSQL reads it: a `LANGUAGE sql` one by the SQL parser (a BEGIN ATOMIC
one from its definition), a PL/pgSQL one by PL/pgSQL's (`parse_plpgsql_json`), each of its
embedded queries by the SQL parser, and an `EXECUTE`, `RETURN QUERY EXECUTE` or `OPEN ... FOR
EXECUTE` of a constant text as SQL too. Each call is a *site*: what it calls, whether it may
lock a value that differs from one of its runs to the next, and whether its arguments are
constants alone (the same lock in every call of the function).

What the same for a whole call is: constants; the function's parameters; a PL/pgSQL
variable whose every value is made of those (assigned outside any loop, never the target of
an INTO, a FETCH, GET DIAGNOSTICS or a loop); never a column of a query's rows. A site on
such a value locks one value however often it runs (a retry loop on the argument); one on
anything else, or in a loop on a loop's variable, or over a query's rows, may lock many.
A relation the body names is a site too (RELATION + its name): reading a view that locks per
row is locking many.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pglast import parser

from app.sql.tree_nodes import STEADY_NODES, children, nodes, steady, strings

# What a call inside a function's body calls; whether it may lock a value that differs from
# one of its runs to the next; and whether its arguments are constants alone.
Site = tuple[str, bool, bool]
# The mark of a site that names a relation.
RELATION = "\x00relation:"

# In a body, a name may be the function's argument or variable (checked by _Reading).
_BODY_STEADY = STEADY_NODES | {"ColumnRef", "A_Indirection", "A_Star"}
# What is the same in every call: constants (a parameter is the function's argument).
CONSTANT = STEADY_NODES - {"ParamRef"}
# PL/pgSQL statements whose bodies (and conditions) run any number of times.
_LOOPS = frozenset(
    {
        "PLpgSQL_stmt_loop",
        "PLpgSQL_stmt_while",
        "PLpgSQL_stmt_fori",
        "PLpgSQL_stmt_fors",
        "PLpgSQL_stmt_forc",
        "PLpgSQL_stmt_foreach_a",
        "PLpgSQL_stmt_dynfors",
    }
)
# Statements that run their expressions once per row they write.
_PER_ROW = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
# PL/pgSQL's parse modes for an embedded query (RawParseMode): a whole statement, an
# expression, an assignment's target and expression.
_STATEMENT, _EXPRESSION = 0, 2
# Parameters that are no input (a variable the function sets).
_OUTPUTS = frozenset({"FUNC_PARAM_OUT", "FUNC_PARAM_TABLE"})


def function_sites(
    language: str, definition: str, source: str, set_returning: frozenset[str]
) -> tuple[Site, ...]:
    """What one function's code calls (`definition`: pg_get_functiondef(), for PL/pgSQL and
    BEGIN ATOMIC bodies; `source`: prosrc). `set_returning`: the names of functions that
    return sets, which make a query's other expressions run once per row. A body PostgreSQL's
    parser cannot read counts every name in it as called many times."""
    try:
        if language == "plpgsql":
            tree = json.loads(parser.parse_plpgsql_json(definition))
            reading = _Reading(set_returning, _steady_names(tree, _inputs(definition)))
            return tuple(reading.plpgsql(tree, False))
        return tuple(_Reading(set_returning, None).sql(source or definition, False))
    except (parser.ParseError, ValueError, KeyError, TypeError, IndexError):
        return _scanned(source or definition)


@dataclass(frozen=True, slots=True)
class _Reading:
    """How one body is read: the set-returning names, and the names that are the same for
    the whole call (None: any name outside a query's rows, as in a LANGUAGE sql body, where
    a bare name is a parameter)."""

    set_returning: frozenset[str]
    names: frozenset[str] | None

    def sql(self, text: str, looped: bool) -> Iterator[Site]:
        for raw in json.loads(parser.parse_sql_json(text)).get("stmts", ()):
            for node_type, fields in (raw.get("stmt") or {}).items():
                yield from self._node(node_type, fields, looped, False)

    def steady(self, arg: dict[str, Any], rows: bool) -> bool:
        """Whether an expression has one value for the whole call: made of constants,
        parameters and steady variables (never, over a query's rows, a name: a column)."""
        if not steady(arg, _BODY_STEADY):
            return False
        for node_type, fields in nodes(arg):
            if node_type == "ColumnRef":
                name = strings(fields.get("fields"))
                if rows or not name:
                    return False
                if self.names is not None and name[0] not in self.names:
                    return False
        return True

    def _node(
        self, node_type: str, fields: dict[str, Any], looped: bool, rows: bool
    ) -> Iterator[Site]:
        """The sites under one node of a SQL tree; `rows`: it runs once per row of a query."""
        if node_type == "SelectStmt":
            rows = rows or bool(
                fields.get("fromClause")
                or fields.get("valuesLists")
                or fields.get("larg")
                or _calls_any(fields.get("targetList"), self.set_returning)
            )
        elif node_type in _PER_ROW:
            rows = True
        elif node_type == "RangeVar":
            yield RELATION + str(fields.get("relname", "")), True, False
        elif node_type == "FuncCall":
            name = strings(fields.get("funcname"))
            if name:
                args = [a for a in fields.get("args") or () if isinstance(a, dict)]
                over = bool(fields.get("over"))
                # (a value made of constants alone is one lock however often it is taken)
                fixed = all(steady(a, CONSTANT) for a in args) and not over
                same = all(self.steady(a, rows) for a in args) and not over
                yield name[-1], not (fixed or same), fixed
        elif node_type == "A_Indirection":
            # `(job).claim`: claim(job), when job has no such field
            arg = fields.get("arg") or {}
            for attribute in strings(fields.get("indirection")):
                yield attribute, not self.steady(arg, rows), False
        elif node_type == "ColumnRef":
            name = strings(fields.get("fields"))
            if len(name) > 1:  # `t.claim`: claim(t)
                varies = rows or (self.names is not None and name[0] not in self.names)
                yield name[-1], varies, False
        for child_type, child in children(node_type, fields):
            yield from self._node(child_type, child, looped, rows)

    def plpgsql(self, node: Any, looped: bool) -> Iterator[Site]:
        """The sites in a PL/pgSQL function's tree (parse_plpgsql_json's), each embedded
        query parsed as SQL."""
        if isinstance(node, list):
            for item in node:
                yield from self.plpgsql(item, looped)
            return
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            if key == "PLpgSQL_expr" and isinstance(value, dict):
                yield from self.sql(_as_sql(value), looped)
                continue
            inner = looped or key in _LOOPS
            if isinstance(value, dict):
                dynamic = value.get("dynquery")
                if key in ("PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors"):
                    dynamic = value.get("query")
                text = _constant_text(dynamic)
                if text is not None:
                    yield from self.sql(text, inner)
            yield from self.plpgsql(value, inner)


def _calls_any(node: Any, names: frozenset[str]) -> bool:
    """True when a call of one of `names` is anywhere under `node` (a list or a node)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            call = item.get("FuncCall")
            if isinstance(call, dict):
                name = strings(call.get("funcname"))
                if name and name[-1] in names:
                    return True
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
    return False


def _as_sql(expr: dict[str, Any]) -> str:
    """An embedded query as a statement PostgreSQL's parser reads: an expression as a SELECT
    of it, an assignment (`x := e`, `x[i] = e`) as a SELECT of its value."""
    query = str(expr.get("query", ""))
    mode = int(expr.get("parseMode", _STATEMENT))
    if mode == _STATEMENT:
        return query
    if mode == _EXPRESSION:
        return f"SELECT {query}"
    depth = 0
    for token in parser.scan(query):
        if token.name in ("ASCII_40", "ASCII_91"):  # ( [
            depth += 1
        elif token.name in ("ASCII_41", "ASCII_93"):
            depth -= 1
        elif depth == 0 and token.name in ("COLON_EQUALS", "ASCII_61"):
            return f"SELECT {query[token.end + 1 :]}"
    raise ValueError("an assignment without its operator")


def _constant_text(expr: Any) -> str | None:
    """The text of an embedded expression that is one string constant (what an EXECUTE of a
    constant runs), else None (a text built at run time is not read)."""
    query = expr.get("PLpgSQL_expr") if isinstance(expr, dict) else None
    if not isinstance(query, dict) or int(query.get("parseMode", -1)) != _EXPRESSION:
        return None
    parsed = json.loads(parser.parse_sql_json(f"SELECT {query.get('query', '')}"))
    targets = parsed["stmts"][0]["stmt"]["SelectStmt"]["targetList"]
    const = targets[0]["ResTarget"].get("val", {}).get("A_Const", {})
    text = (const.get("sval") or {}).get("sval")
    return text if isinstance(text, str) and len(targets) == 1 else None


def _inputs(definition: str) -> frozenset[str]:
    """The names of a function's input parameters, and its own name (`f.job` names f's
    parameter job), from its definition."""
    parsed = json.loads(parser.parse_sql_json(definition))
    create = parsed["stmts"][0]["stmt"]["CreateFunctionStmt"]
    names: set[str] = set()
    for item in create.get("parameters") or ():
        parameter = item.get("FunctionParameter") or {}
        if parameter.get("name") and parameter.get("mode") not in _OUTPUTS:
            names.add(str(parameter["name"]))
    own = strings(create.get("funcname"))
    return frozenset(names | ({own[-1]} if own else set()))


def _steady_names(tree: Any, inputs: frozenset[str]) -> frozenset[str]:
    """The names in a PL/pgSQL body that hold one value for the whole call: its inputs and
    the variables whose every value (default, assignment outside a loop) is made of steady
    names and constants, and that nothing else sets."""
    function = tree[0]["PLpgSQL_function"]
    datums = function.get("datums") or []
    declared = [_refname(d) for d in datums]
    assigned: dict[str, list[dict[str, Any]]] = {}
    unsteady: set[str] = set()
    for index, datum in enumerate(datums):
        var = datum.get("PLpgSQL_var")
        name = declared[index]
        if var is None or not name:
            if name:
                unsteady.add(str(name))  # (a record or a row: set by INTO, loops)
            continue
        if var.get("default_val"):
            assigned.setdefault(str(name), []).append(var["default_val"])
    _collect(function.get("action"), False, declared, assigned, unsteady)
    steady_names = {str(n) for n in declared if n} | set(inputs)
    steady_names -= unsteady
    reading = _Reading(frozenset(), frozenset(steady_names))
    changed = True
    while changed:
        changed = False
        reading = _Reading(frozenset(), frozenset(steady_names))
        for name, values in assigned.items():
            if name in steady_names and not all(_steady_value(v, reading) for v in values):
                steady_names.discard(name)
                changed = True
    return frozenset(steady_names)


def _collect(
    node: Any,
    looped: bool,
    declared: list[Any],
    assigned: dict[str, list[dict[str, Any]]],
    unsteady: set[str],
) -> None:
    """Every assignment in a PL/pgSQL body, and the variables set any other way (INTO,
    FETCH, GET DIAGNOSTICS, a loop's variable) or assigned in a loop."""
    if isinstance(node, list):
        for item in node:
            _collect(item, looped, declared, assigned, unsteady)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if not isinstance(value, dict | list):
            continue
        inner = looped or key in _LOOPS
        if key == "PLpgSQL_stmt_assign" and isinstance(value, dict):
            name = _declared(declared, value.get("varno"))
            if name is not None:
                if inner:
                    unsteady.add(name)
                assigned.setdefault(name, []).append(value.get("expr") or {})
        elif isinstance(value, dict):
            unsteady.update(_set_otherwise(key, value, declared))
        _collect(value, inner, declared, assigned, unsteady)


def _set_otherwise(key: str, value: dict[str, Any], declared: list[Any]) -> Iterator[str]:
    """The variables one PL/pgSQL node sets other than by assignment: an INTO or FETCH
    target (a row of them), GET DIAGNOSTICS, a loop's variable."""
    varnos: list[Any] = []
    if key == "PLpgSQL_row":
        varnos = [field.get("varno") for field in value.get("fields") or ()]
    elif key == "PLpgSQL_diag_item":
        varnos = [value.get("target")]
    elif key in _LOOPS:
        varnos = [value.get("varno")]
        var = value.get("var")
        if isinstance(var, dict) and _refname(var):
            yield str(_refname(var))
    for varno in varnos:
        name = _declared(declared, varno)
        if name is not None:
            yield name


def _refname(datum: dict[str, Any]) -> str | None:
    """The name a PL/pgSQL datum (`{"PLpgSQL_var": {...}}`) declares, if any."""
    for fields in datum.values():
        if isinstance(fields, dict) and fields.get("refname"):
            return str(fields["refname"])
    return None


def _declared(declared: list[Any], varno: Any) -> str | None:
    if isinstance(varno, int) and 0 <= varno < len(declared) and declared[varno]:
        return str(declared[varno])
    return None


def _steady_value(expr: dict[str, Any], reading: _Reading) -> bool:
    """Whether a PL/pgSQL value (a default, an assignment) is the same for the whole call."""
    try:
        parsed = json.loads(parser.parse_sql_json(_as_sql(expr.get("PLpgSQL_expr") or {})))
        select = parsed["stmts"][0]["stmt"]["SelectStmt"]
    except (parser.ParseError, ValueError, KeyError, IndexError):
        return False
    if any(select.get(k) for k in ("fromClause", "valuesLists", "larg", "whereClause")):
        return False
    return all(
        reading.steady(t["ResTarget"].get("val") or {}, False)
        for t in select.get("targetList") or ()
    )


def _scanned(text: str) -> tuple[Site, ...]:
    """Every name PostgreSQL's scanner finds in a text, as called many times."""
    try:
        tokens = parser.scan(text)
    except parser.ParseError:
        return ()
    names = {text[t.start : t.end + 1].strip('"') for t in tokens if t.name == "IDENT"}
    return tuple((name.lower(), True, False) for name in sorted(names))
