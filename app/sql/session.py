"""Session hygiene: what every pooled connection starts with, and how it is put back clean.

Connections are shared by every caller, so what one request changes in its session must not
leak into the next. Settings mirrorpool relies on (time zone, date and interval styles,
default timeouts) are given as startup options, so `RESET ALL` restores them. Plain requests
run in autocommit with no extra round trip; a request whose statement can leave session state
behind (SET, temp tables, advisory locks, set_config, ...) marks its connection dirty and the
connection is reset before anyone else gets it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal

from psycopg import AsyncConnection, sql

Isolation = Literal["read_committed", "repeatable_read", "serializable"]

# Everything DISCARD ALL does except DEALLOCATE ALL, which would drop the statements
# psycopg prepared (its cache would then point at statements that no longer exist).
RESET_SQL = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
)

# Status tags of statements that cannot leave anything behind in the session.
_CLEAN_TAGS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "FETCH"})

# Words whose presence means a statement may change the session: set_config(..., false),
# advisory locks, temporary objects, holdable cursors, prepared statements, notifications.
_RISKY_WORDS = re.compile(
    r"set_config|advisory|\btemp(orary)?\b|\bhold\b|\bprepare\b|\blisten\b|\brole\b"
    r"|\bauthorization\b|\bsearch_path\b",
    re.IGNORECASE,
)

# Parameters the server reports whenever they change: a change means the session was altered.
_REPORTED = (b"TimeZone", b"DateStyle", b"IntervalStyle", b"is_superuser", b"session_authorization")


def startup_options(settings: dict[str, str]) -> str:
    """The libpq `options` value that sets these parameters at connection start."""
    parts = []
    for name, value in settings.items():
        escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
        parts.append(f"-c {name}={escaped}")
    return " ".join(parts)


def snapshot(conn: AsyncConnection[Any]) -> tuple[bytes | None, ...]:
    """The reported parameters, to compare after a statement (raw: this runs per request)."""
    status = conn.pgconn.parameter_status
    return tuple(status(p) for p in _REPORTED)


def may_dirty(sql_text: str, command: str | None) -> bool:
    """True when a statement may have left state behind in its session."""
    tag = (command or "").split(" ", 1)[0]
    if tag not in _CLEAN_TAGS:
        return True
    return _risky(sql_text) if len(sql_text) <= _CACHEABLE_LENGTH else _risky.__wrapped__(sql_text)


@lru_cache(maxsize=1024)
def _risky(sql_text: str) -> bool:
    return _RISKY_WORDS.search(sql_text) is not None


_CACHEABLE_LENGTH = 8192


async def reset(conn: AsyncConnection[Any]) -> None:
    """Put a session back as the pool made it."""
    await conn.execute(RESET_SQL)


def begin_sql(
    *,
    read_only: bool,
    isolation: Isolation | None,
    timeout_ms: int,
    lock_timeout_ms: int,
    role: str | None = None,
    local_settings: Mapping[str, str] | None = None,
) -> sql.Composed:
    """BEGIN with the transaction's mode, its local timeouts and `local_settings` (for
    sessions that do not carry them: behind a transaction pooler), as one simple query."""
    parts = [
        sql.SQL(begin_statement(isolation, read_only)),
        sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(int(timeout_ms))),
        sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(int(lock_timeout_ms))),
    ]
    for name, value in (local_settings or {}).items():
        # Names are mirrorpool's own constants (SESSION_SETTINGS), never a request's.
        parts.append(sql.SQL("SET LOCAL {} = {}").format(sql.SQL(name), sql.Literal(value)))
    if role is not None:
        parts.append(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
    return sql.SQL("; ").join(parts)


# The transaction's own limits, as one statement that pipeline mode can send (it takes one
# statement per command, so not the `BEGIN; SET LOCAL ...` string above).
LOCAL_LIMITS_SQL = (
    "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)"
)
LOCAL_LIMITS_AS_ROLE_SQL = LOCAL_LIMITS_SQL + ", set_config('role', $3, true)"


def begin_statement(isolation: Isolation | None, read_only: bool) -> str:
    """BEGIN with the transaction's isolation level and access mode."""
    mode = []
    if isolation:
        mode.append("ISOLATION LEVEL " + isolation.replace("_", " ").upper())
    if read_only:
        mode.append("READ ONLY")
    return " ".join(["BEGIN", *mode])
