"""From a request's SQL text and JSON parameters to a statement psycopg can run, or a 4xx."""

from __future__ import annotations

from typing import Any

from app.errors import Forbidden, InvalidSQL, LimitExceeded
from app.settings import Settings
from app.sql import refusals, transaction_pooling
from app.sql.lexer import code_words
from app.sql.placeholders import BoundSQL, bind
from app.sql.types import to_param


def prepare(
    sql: str,
    params: list[Any] | dict[str, Any] | None,
    settings: Settings,
    role: str | None = None,
    read_only: bool = False,
) -> BoundSQL:
    """Check the limits, bind `:name` or `$n` parameters, and adapt the values. Refuse what
    no request may run (app/sql/refusals.py); with a role, statements that would leave it
    (SET/RESET ROLE, SESSION AUTHORIZATION, ...); behind PgBouncer, statements that would
    change the shared server session."""
    if len(sql) > settings.max_sql_length:
        raise LimitExceeded(
            f"the SQL is {len(sql)} characters long; the limit is {settings.max_sql_length}"
        )
    if "\x00" in sql:
        raise InvalidSQL("the SQL contains a NUL character, which PostgreSQL cannot accept")
    count = len(params) if params is not None else 0
    if count > settings.max_params:
        raise LimitExceeded(f"{count} parameters were sent; the limit is {settings.max_params}")
    if _too_deep(params, settings.max_json_depth):
        raise LimitExceeded(f"the parameters nest deeper than {settings.max_json_depth} levels")
    bound = bind(sql, params)
    if role is not None and leaves_role(bound.sql):
        raise Forbidden(
            "this key runs as a database role; statements that change the role or the "
            "session's settings (SET/RESET ROLE, SESSION AUTHORIZATION, RESET ALL, DISCARD, "
            "set_config) are refused"
        )
    if settings.pgbouncer and (why := transaction_pooling.refusal(bound.sql)) is not None:
        raise InvalidSQL(why)
    if (why := refusals.refusal(bound.sql, read_only)) is not None:
        raise InvalidSQL(why)
    return BoundSQL(bound.sql, [to_param(v) for v in bound.params], bound.names)


_ROLE_WORDS = {"ROLE", "AUTHORIZATION", "ALL"}


def leaves_role(sql: str) -> bool:
    """True when a statement could switch away from the role it runs as."""
    words = [w.upper() for w in code_words(sql)]
    if "SET_CONFIG" in words or "DISCARD" in words:
        return True
    for i, word in enumerate(words):
        if word in ("SET", "RESET"):
            following = [w for w in words[i + 1 : i + 4] if w not in ("SESSION", "LOCAL")]
            if following and following[0] in _ROLE_WORDS:
                return True
    return False


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
