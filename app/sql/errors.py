"""Turning psycopg's errors into mirrorpool's: the SQLSTATE and diagnostics kept, nothing lost."""

from __future__ import annotations

from typing import Any

import psycopg

from app.errors import DatabaseError, InvalidParameters, MirrorpoolError, NodeFailed
from app.redaction import redactor

# SQLSTATEs meaning the node (not the statement) failed: connection exceptions, the server
# shutting down or in crash recovery, too many connections.
_NODE_FAILURE_PREFIXES = ("08", "57P01", "57P02", "57P03", "53300")

_DIAG_FIELDS = {
    "detail": "message_detail",
    "hint": "message_hint",
    "position": "statement_position",
    "internal_position": "internal_position",
    "internal_query": "internal_query",
    "where": "context",
    "schema": "schema_name",
    "table": "table_name",
    "column": "column_name",
    "datatype": "datatype_name",
    "constraint": "constraint_name",
    "severity": "severity_nonlocalized",
}


def is_node_failure(exc: BaseException) -> bool:
    """True when the error says the connection or the server failed, not the statement."""
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state.startswith(_NODE_FAILURE_PREFIXES)


def diagnostics(exc: psycopg.Error) -> dict[str, Any]:
    """PostgreSQL's diagnostic fields of an error, under short names, without the empty ones."""
    fields: dict[str, Any] = {"message": exc.diag.message_primary or str(exc)}
    for name, attr in _DIAG_FIELDS.items():
        value = getattr(exc.diag, attr, None)
        if value is not None:
            fields[name] = int(value) if name.endswith("position") else redactor.scrub(value)
    return fields


def database_error(
    exc: psycopg.Error, node: str, statement_index: int | None = None
) -> MirrorpoolError:
    """The mirrorpool error for a psycopg error raised while running a request on `node`."""
    where: dict[str, Any] = {"node": node}
    if statement_index is not None:
        where["statement_index"] = statement_index
    message = redactor.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
    if is_node_failure(exc):
        return NodeFailed(f"node {node} failed while running the statement: {message}", **where)
    if exc.sqlstate is None:
        # Raised by psycopg itself before anything reached the server: the parameters
        # could not be sent as given (a NUL byte in a string, a value it cannot adapt).
        return InvalidParameters(f"the parameters cannot be sent: {message}", **where)
    where["database"] = diagnostics(exc)
    detail = redactor.scrub(exc.diag.message_primary or message)
    return DatabaseError(detail, exc.sqlstate, **where)
