"""From a request's SQL and parameters to `$n` SQL, its parse tree and a list of values, or a
clear 400.

`$1`, `$2`, ... take an array of parameters; `:name` placeholders take an object and are
rewritten to `$n` (a name used twice gets one number). Placeholders are found by
PostgreSQL's own scanner (pglast), so text inside literals, quoted identifiers, dollar quotes
and comments is never one; `::` is a cast and `:=` a named argument. Exactly one statement is
allowed (the parser counts them); trailing semicolons are dropped.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from pglast import parser as pg_parser

from app.errors import InvalidParameters
from app.sql import tree as trees
from app.sql.text_cache import TextCache
from app.sql.tree import Tree

_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_SEMICOLON = "ASCII_59"
_COLON = "ASCII_58"


@dataclass(frozen=True, slots=True)
class BoundSQL:
    """SQL with `$n` placeholders only, the values in `$n` order, and its parse tree."""

    sql: str
    params: list[Any]
    names: list[str]
    tree: Tree


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True, slots=True)
class _Shape:
    """What bind() needs to know of a SQL text; the same text always has the same shape."""

    text: str
    positional: frozenset[int]
    named: tuple[str, ...]
    rewritten: str
    tree: Tree


def _shape(sql: str) -> _Shape:
    try:
        tokens = pg_parser.scan(sql)
    except pg_parser.ParseError as exc:
        raise trees.syntax_error(exc) from None
    end = len(sql)
    last = max(
        (i for i, t in enumerate(tokens) if t.name not in _COMMENTS | {_SEMICOLON}), default=-1
    )
    trailing = next((t for t in tokens[last + 1 :] if t.name == _SEMICOLON), None)
    if trailing is not None:
        end = trailing.start
        tokens = tokens[: last + 1]
    text = sql[:end]
    positional = frozenset(int(sql[t.start + 1 : t.end + 1]) for t in tokens if t.name == "PARAM")
    spans: list[tuple[int, int, str]] = []  # (start, end, name) of each :name
    for colon, word in itertools.pairwise(tokens):
        if colon.name == _COLON and word.start == colon.end + 1:
            name = sql[word.start : word.end + 1]
            quoted = name.startswith('"') or name[:2].lower() == "u&"
            if (word.name == "IDENT" or word.kind != "NO_KEYWORD") and not quoted:
                spans.append((colon.start, word.end + 1, name))
    named = tuple(dict.fromkeys(name for _, _, name in spans))
    number = {name: i for i, name in enumerate(named, start=1)}
    pieces = []
    at = 0
    for start, stop, name in spans:
        pieces += [text[at:start], f"${number[name]}"]
        at = stop
    rewritten = "".join([*pieces, text[at:]])
    return _Shape(text, positional, named, rewritten, trees.parse(rewritten))


# Services send the same statements again and again: scan and parse each text once (kept
# within the parse cache's bounds: a shape holds its tree).
def _shape_weight(shape: _Shape) -> int:
    return shape.tree.weight


_shapes: TextCache[_Shape] = TextCache(_shape_weight)
_kept = _shapes.get


def bind(sql: str, params: list[Any] | dict[str, Any] | None) -> BoundSQL:
    """Check the placeholders against the parameters and return what psycopg runs."""
    shape = _kept(sql)
    if shape is None:
        shape = _shape(sql)
        _shapes.keep(sql, shape)  # (not a text over CACHEABLE_LENGTH)
    if shape.positional and shape.named:
        raise InvalidParameters("the SQL mixes $n and :name placeholders; use one kind")
    if isinstance(params, dict):
        if shape.positional:
            raise InvalidParameters(
                "the SQL uses $n placeholders: send params as an array, not an object"
            )
        return _bind_named(shape, params)
    if shape.named:
        raise InvalidParameters(
            f"the SQL uses named placeholders ({', '.join(':' + n for n in shape.named)})"
            ": send params as an object, not an array"
        )
    values = list(params or [])
    used = shape.positional
    given = set(range(1, len(values) + 1))
    missing = sorted(used - given)
    extra = sorted(given - used)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing values for " + ", ".join(f"${n}" for n in missing))
        if extra:
            parts.append("unused " + ", ".join(f"${n}" for n in extra))
        top = max(used, default=0)
        uses = f"$1..${top}" if top else "no placeholders"
        raise InvalidParameters(
            f"{'; '.join(parts)}: the SQL uses {uses} but {_plural(len(values), 'parameter')}"
            f" {'was' if len(values) == 1 else 'were'} given",
            missing=[f"${n}" for n in missing],
            extra=[f"${n}" for n in extra],
        )
    return BoundSQL(shape.text, values, [], shape.tree)


def _bind_named(shape: _Shape, params: dict[str, Any]) -> BoundSQL:
    missing = [n for n in shape.named if n not in params]
    extra = [n for n in params if n not in shape.named]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(":" + n for n in missing))
        if extra:
            parts.append("not in the SQL: " + ", ".join(":" + n for n in extra))
        raise InvalidParameters(
            "; ".join(parts),
            missing=[":" + n for n in missing],
            extra=[":" + n for n in extra],
        )
    return BoundSQL(
        shape.rewritten, [params[n] for n in shape.named], list(shape.named), shape.tree
    )
