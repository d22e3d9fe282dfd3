"""Answering from what was read: each command's Reply (its rows, its tag, or its error, a
stale named statement dropped), and a successful reply as the API reports it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import AsyncConnection, pq
from psycopg.pq.abc import PGresult

from app.sql.columns import TypeNames
from app.sql.pipeline.commands import Reply
from app.sql.pipeline.reading import OK, Slot
from app.sql.pipeline.sending import ConnState
from app.sql.results import RowFormat, StatementResult, statement_result

_CANCELED = "57014"
_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
# A named statement that did not run: gone from the server, or planned for another schema.
_STALE = ("26000", "0A000")
_NOT_RUN = "not run: an earlier statement failed"


async def answer(
    conn: AsyncConnection[Any],
    node: str,
    types: TypeNames,
    reply: Reply,
    max_rows: int,
    row_format: RowFormat,
) -> StatementResult:
    """A statement's successful reply as the API reports it: its columns, up to `max_rows`
    rows (one more kept says it was cut), its command tag (for a statement stopped on the
    server, SELECT and the rows it had sent)."""
    columns = await types.of_result(conn, node, reply.result)
    return statement_result(
        columns, reply.rows, reply.command, reply.rowcount, max_rows, row_format, reply.cut
    )


def answer_known(
    conn: AsyncConnection[Any],
    node: str,
    types: TypeNames,
    reply: Reply,
    max_rows: int,
    row_format: RowFormat,
) -> StatementResult | None:
    """answer() without a wait, for a result whose column types are known already (None
    when they are not: answer() looks them up)."""
    columns = types.known_result(conn, node, reply.result)
    if columns is None:
        return None
    return statement_result(
        columns, reply.rows, reply.command, reply.rowcount, max_rows, row_format, reply.cut
    )


def reply(
    state: ConnState, slot: Slot, encoding: str, stale: list[bytes], cancelled_from: int | None
) -> Reply:
    if slot.prepares:
        prepared = slot.prepared
        if prepared is None or prepared.status not in OK:
            return Reply(error=error_of(prepared, encoding))
        assert slot.name is not None
        state.prepared[slot.key] = slot.name
    if slot.failure is None and slot.final is not None:
        return _answered(slot, slot.final)
    error = error_of(slot.failure, encoding)
    if error.sqlstate == _CANCELED:
        if slot.stopped:  # cancelled by us, over its limit: what it kept is its answer
            return _answered(slot, slot.first)
        if cancelled_from is not None and slot.unit > cancelled_from:
            return Reply(error=error, stale=True)  # hit by the cancel meant for another
    if slot.name is not None and not slot.prepares and error.sqlstate in _STALE:
        if state.prepared.pop(slot.key, None) is not None and error.sqlstate == "0A000":
            stale.append(slot.name)
        return Reply(error=error, stale=True)
    return Reply(error=error)


def _answered(slot: Slot, result: PGresult | None) -> Reply:
    # libpq puts the command tag on the last chunk, or on the end when nothing came chunked.
    tag = slot.last.command_status if slot.last is not None else None
    tagged = slot.last if tag else slot.final
    command: str | None
    if tagged is not None and tagged.command_status:
        command = tagged.command_status.decode()
        rowcount = tagged.command_tuples
    else:  # no tag comes for a statement cancelled: the rows it had sent
        command = f"SELECT {slot.seen}" if slot.stopped else None
        rowcount = None
    return Reply(
        result,
        rows=slot.rows,
        cut=slot.cut,
        seen=slot.seen,
        stopped=slot.stopped,
        command=command,
        rowcount=rowcount,
        oversized=slot.oversized,
    )


def error_of(result: PGresult | None, encoding: str) -> psycopg.Error:
    if result is None:
        return psycopg.OperationalError("the server sent no result for the statement")
    if result.status == _ABORTED:
        return psycopg.errors.PipelineAborted(_NOT_RUN)
    return psycopg.errors.error_from_result(result, encoding=encoding)
