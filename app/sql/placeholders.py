"""From a request's SQL and parameters to `$n` SQL and a list of values, or a clear 400.

`$1`, `$2`, ... take an array of parameters; `:name` placeholders take an object and are
rewritten to `$n` (a name used twice gets one number). Placeholders inside literals,
quoted identifiers, dollar quotes and comments are text, not placeholders; `::` is a cast.
Exactly one statement is allowed; trailing semicolons are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from app.errors import InvalidParameters, InvalidSQL
from app.sql.lexer import Kind, Token, tokens


@dataclass(frozen=True)
class BoundSQL:
    """SQL with `$n` placeholders only, and the values in `$n` order."""

    sql: str
    params: list[Any]
    names: list[str]


def _one_statement(sql: str) -> list[Token]:
    """The tokens of the single statement, without trailing semicolons and what follows."""
    toks = list(tokens(sql))
    end = len(toks)
    for i, token in enumerate(toks):
        if token.kind is Kind.SEMICOLON:
            end = i
            rest = [t for t in toks[i + 1 :] if t.kind not in _BLANK]
            if any(t.kind is not Kind.SEMICOLON for t in rest):
                raise InvalidSQL(
                    "the SQL holds more than one statement; send one per request "
                    "(or use /v1/transaction)"
                )
            break
    body = toks[:end]
    if all(t.kind in _BLANK for t in body):
        raise InvalidSQL("the SQL is empty")
    return body


_BLANK = {Kind.WHITESPACE, Kind.LINE_COMMENT, Kind.BLOCK_COMMENT}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class _Shape:
    """What bind() needs to know of a SQL text; the same text always has the same shape."""

    text: str
    positional: frozenset[int]
    named: tuple[str, ...]
    rewritten: str


def _shape(sql: str) -> _Shape:
    body = _one_statement(sql)
    positional = frozenset(int(t.text[1:]) for t in body if t.kind is Kind.POSITIONAL)
    named = tuple(dict.fromkeys(t.text[1:] for t in body if t.kind is Kind.NAMED))
    number = {name: i for i, name in enumerate(named, start=1)}
    rewritten = "".join(f"${number[t.text[1:]]}" if t.kind is Kind.NAMED else t.text for t in body)
    return _Shape("".join(t.text for t in body), positional, named, rewritten)


# Services send the same statements again and again: tokenise each text once.
_cached_shape = lru_cache(maxsize=1024)(_shape)
_CACHEABLE_LENGTH = 8192


def bind(sql: str, params: list[Any] | dict[str, Any] | None) -> BoundSQL:
    """Check the placeholders against the parameters and return what psycopg runs."""
    shape = _cached_shape(sql) if len(sql) <= _CACHEABLE_LENGTH else _shape(sql)
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
    return BoundSQL(shape.text, values, [])


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
    return BoundSQL(shape.rewritten, [params[n] for n in shape.named], list(shape.named))
