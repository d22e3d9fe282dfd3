"""From a request's SQL text and JSON parameters to a statement psycopg can run, or a 4xx."""

from __future__ import annotations

from typing import Any

from app.errors import Forbidden, InvalidParameters, InvalidSQL, LimitExceeded
from app.sql import refusals, transaction_pooling
from app.sql.options import StatementRules
from app.sql.placeholders import BoundSQL, bind
from app.sql.types import to_param


def prepare(
    sql: str,
    params: list[Any] | dict[str, Any] | None,
    rules: StatementRules,
    read_only: bool = False,
) -> BoundSQL:
    """Check the limits, bind `:name` or `$n` parameters, parse the statement, and adapt the
    values. Refuse what no request may run, and what a read-only request may not
    (app/sql/refusals.py); behind PgBouncer, statements that would change the shared server
    session (app/sql/transaction_pooling.py)."""
    if len(sql) > rules.max_sql_length:
        raise LimitExceeded(
            f"the SQL is {len(sql)} characters long; the limit is {rules.max_sql_length}"
        )
    if "\x00" in sql:
        raise InvalidSQL("the SQL contains a NUL character, which PostgreSQL cannot accept")
    count = len(params) if params is not None else 0
    if count > rules.max_params:
        raise LimitExceeded(f"{count} parameters were sent; the limit is {rules.max_params}")
    if _too_deep(params, rules.max_json_depth):
        raise LimitExceeded(f"the parameters nest deeper than {rules.max_json_depth} levels")
    bound = bind(sql, params)
    tree = bound.tree
    if rules.pgbouncer and (why := transaction_pooling.refusal(tree)) is not None:
        raise InvalidSQL(why)
    if (why := refusals.refusal(tree, False)) is not None:
        raise InvalidSQL(why)
    if read_only and (why := refusals.refusal(tree, True)) is not None:
        raise Forbidden(why)
    for value in bound.params:
        _check_text(value)
    return BoundSQL(bound.sql, [to_param(v) for v in bound.params], bound.names, tree)


def _check_text(value: Any) -> None:
    """400 for a string PostgreSQL cannot receive: JSON allows a lone UTF-16 surrogate
    (`"\\ud800"`), which no UTF-8 text holds."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise InvalidParameters(
                    "a parameter holds a lone surrogate (such as \\ud800), which is not text"
                ) from None
    elif isinstance(value, list):
        for item in value:
            _check_text(item)


def _too_deep(value: Any, limit: int) -> bool:
    """True when lists and objects nest deeper than `limit` (checked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False
