"""From a request's SQL text and JSON parameters to a statement psycopg can run, or a 4xx."""

from __future__ import annotations

from typing import Any

from app.errors import InvalidSQL, LimitExceeded
from app.settings import Settings
from app.sql.placeholders import BoundSQL, bind
from app.sql.types import to_param


def prepare(sql: str, params: list[Any] | dict[str, Any] | None, settings: Settings) -> BoundSQL:
    """Check the limits, bind `:name` or `$n` parameters, and adapt the values."""
    if len(sql) > settings.max_sql_length:
        raise LimitExceeded(
            f"the SQL is {len(sql)} characters long; the limit is {settings.max_sql_length}"
        )
    if "\x00" in sql:
        raise InvalidSQL("the SQL contains a NUL character, which PostgreSQL cannot accept")
    count = len(params) if params is not None else 0
    if count > settings.max_params:
        raise LimitExceeded(f"{count} parameters were sent; the limit is {settings.max_params}")
    bound = bind(sql, params)
    return BoundSQL(bound.sql, [to_param(v) for v in bound.params], bound.names)
