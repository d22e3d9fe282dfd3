"""Results as PostgreSQL's own text output, for clients that parse values themselves by type
OID (Neon's SQL-over-HTTP protocol, app/api/neon.py).

Such a client reads what a plain PostgreSQL session prints, so the statement runs under
PostgreSQL's default output styles: `IntervalStyle` postgres (`1 day 02:03:04`) and
`DateStyle` ISO instead of the ISO 8601 forms pinned for mirrorpool's JSON answers
(app/sql/types.py SESSION_SETTINGS). DateStyle keeps the pinned field order (YMD), which
only input reads: a literal in a function's body is read at parse time, and PL/pgSQL keeps
that plan for the backend, so a /sql request must read literals as every other request does
(ISO output is the same whatever the order; the in and out functions of the styled types
are stable, so no output is folded into a plan). They are set with `set_config(..., true)`
inside the request's own transaction, with its limits, so they end with it (COMMIT or ROLLBACK) and
never reach another request; a pure read runs in autocommit, on the plain path or in a lane,
with the styles set first in its own implicit transaction, which its Sync ends. A plan made
under one style may hold it (a folded
`'1 day'::interval::text`), so statements prepared by name under these styles are kept
apart from those prepared under mirrorpool's (app/sql/pipeline Command.styles). The other pinned
settings already are PostgreSQL's defaults (`extra_float_digits` 1, `bytea_output` hex,
`standard_conforming_strings` on, UTF8), and `TimeZone` stays UTC: clients read the offset.

Values are loaded by psycopg's TextLoader for every OID (one adapters map whose only loader
is the fallback for unknown OIDs), so arrays, ranges, records and user types all arrive as
the server's text, NULL as None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg.adapt import AdaptersMap, Transformer
from psycopg.pq.abc import PGresult
from psycopg.types.string import TextLoader

from app.sql.columns import TextField
from app.sql.results import StatementResult, affected

if TYPE_CHECKING:
    from app.sql.pipeline import Reply

# PostgreSQL's defaults for what mirrorpool pins otherwise (names are our constants).
POSTGRES_STYLES = {"IntervalStyle": "postgres", "DateStyle": "ISO, YMD"}
STYLES = "postgres"  # what pipeline.Command.styles says of statements run under them
_STYLE_CALLS = ", ".join(
    f"pg_catalog.set_config('{name}', '{value}', true)" for name, value in POSTGRES_STYLES.items()
)
# session.LOCAL_LIMITS_SQL ($1 statement_timeout, $2 lock_timeout) and the styles, in one.
LIMITS_AND_STYLES_SQL = (
    "SELECT pg_catalog.set_config('statement_timeout', $1, true),"
    " pg_catalog.set_config('lock_timeout', $2, true), " + _STYLE_CALLS
)
# The styles alone, for a pure read run outside a transaction of its own (the plain path and
# the lanes, app/sql/plain.py commands_for): set in the statement's implicit transaction,
# they end with its Sync.
STYLES_SQL = "SELECT " + _STYLE_CALLS

_TEXT = AdaptersMap()
_TEXT.register_loader(0, TextLoader)  # the fallback for every OID: the text, decoded


def fields_of(result: PGresult) -> list[TextField]:
    """Each result column as libpq describes it: name, type, source table and column, size
    and type modifier."""
    return [
        TextField(
            (result.fname(i) or b"").decode(),
            result.ftype(i),
            result.ftable(i),
            result.ftablecol(i),
            result.fsize(i),
            result.fmod(i),
        )
        for i in range(result.nfields)
    ]


def rows_of(result: PGresult, limit: int) -> list[Any]:
    """Up to `limit` rows, each a tuple of text values (None for NULL)."""
    if not result.ntuples:  # (a chunk of rows, or the whole result)
        return []
    tx = Transformer(_TEXT)
    tx.set_pgresult(result)
    try:
        return tx.load_rows(0, min(result.ntuples, limit), tuple)
    finally:
        tx.set_pgresult(None)


def from_reply(reply: Reply, max_rows: int) -> StatementResult:
    """A statement's reply read in chunks with text values (pipeline.Keep text=True): the
    rows kept, at most `max_rows` (truncated when more came, or they were cut for size)."""
    rows = list(reply.rows)
    truncated = reply.cut or len(rows) > max_rows
    del rows[max_rows:]
    command = reply.command
    return StatementResult(
        [],
        rows,
        command,
        affected(command, reply.rowcount, len(rows)),
        truncated,
        fields_of(reply.result) if reply.result is not None else [],
    )
