"""Pipelined execution on one connection: many statements, one write, one wait.

Built on psycopg's libpq layer (pipeline mode, prepared statements, its Transformer for
parameters and rows and its C result-fetching generators). A *unit* is a list of commands
followed by one Sync: the commands of a unit share an implicit transaction (or the explicit
one they open), and a Sync ends it, so separate units commit or fail on their own. After an
error the server skips the rest of its unit; each command reports its own result either way.

Used by the multiplexing lanes (one unit per request) and by /v1/transaction and other
wrapped statements (one unit: BEGIN, the limits, the statements, COMMIT, in one round trip).

A statement text is prepared by name on a connection the second time it runs there (one-off
texts stay unnamed), up to MAX_PREPARED names per connection, the oldest giving its place to
a new one when they are all taken (and deallocated after a run). A named statement the server
no longer has (26000), or whose result type a schema change altered (0A000), is dropped and
reported `stale`: it did not run, and the caller may send it again.

Results are read in chunks (libpq's chunked rows mode, CHUNK_ROWS rows per result), so what
a statement returns is never held whole: each command keeps what its Keep allows (max_rows
+ 1 rows within the request's byte allowance) and drops the rest as it comes. A command
whose Keep says `stop` is cancelled on the server once it is over (psycopg's cancel_safe)
and the server is still sending (or DRAIN_CHUNKS more chunks came), so the server's work
ends there too; a unit after it that fails as cancelled (the cancel came when that one had
started) is reported `stale`, to be sent again.

The parts, along its seams: commands.py (what goes in, what comes back), sending.py
(parameters and prepared names), reading.py (results in order, rows kept in chunks) and
answering.py (each command's reply, and a reply as the API reports it); this module runs
them on one connection.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection, pq

from app.sql.pipeline.answering import answer, answer_known, error_of, reply
from app.sql.pipeline.commands import Allowance, Command, Keep, Key, Reply, UnitReply
from app.sql.pipeline.reading import OK, SYNC, Reading, Slot, collect, read
from app.sql.pipeline.sending import (
    ConnState,
    deallocations,
    dump,
    forget_prepared,
    send,
    state_of,
)
from app.sql.pipeline.syncing import queue_sync, require_one_write

__all__ = [
    "Allowance",
    "Command",
    "ConnState",
    "Keep",
    "Reply",
    "UnitReply",
    "answer",
    "answer_known",
    "describe",
    "forget_prepared",
    "require_one_write",
    "run_units",
    "state_of",
]

logger = logging.getLogger(__name__)

# How long asking the server to cancel a statement over its limit may take.
CANCEL_TIMEOUT_S = 5.0


async def run_units(
    conn: AsyncConnection[Any],
    units: Sequence[Sequence[Command]],
    progress: Callable[[], None] | None = None,
    settled: Callable[[int, UnitReply], None] | None = None,
) -> list[UnitReply]:
    """Send every unit at once, each closed by a Sync, and return each command's reply.

    `progress` is called as each unit's Sync comes back, and then `settled` with the unit's
    index and its replies, while the units after it are still running (neither may raise,
    nor use the connection). A command whose parameters cannot
    be sent gets a Reply with that error, its unit is not sent at all, and the unit's other
    commands get empty Replies. A broken connection raises (psycopg.Error or OSError), and
    so does cancellation; the connection is then closed, its state being unknown.
    """
    state = state_of(conn)
    pgconn = conn.pgconn
    out = [UnitReply([]) for _ in units]
    sent: list[tuple[int, list[Slot]]] = []
    naming: dict[Key, bytes] = {}  # names prepared by this run, shared by its later units
    reading: Reading | None = None
    encoding = conn.info.encoding
    stale: list[bytes] = []
    pgconn.enter_pipeline_mode()
    try:
        for index, unit in enumerate(units):
            dumped = dump(state, unit)
            if isinstance(dumped, tuple):
                failed, error = dumped
                # Nothing of this unit is sent: only the culprit reports anything.
                out[index].replies = [
                    Reply(error=error if i == failed else None) for i in range(len(unit))
                ]
                continue
            slots = [
                send(pgconn, state, naming, c, d, len(sent))
                for c, d in zip(unit, dumped, strict=True)
            ]
            queue_sync(pgconn)  # sent with the batch, in one write, as the reading starts
            sent.append((index, slots))
        if sent:
            reading = run = Reading([slots for _, slots in sent], None)

            def synced() -> None:
                # A unit's replies as its Sync comes: a cancel sent later, for a unit after
                # it, cannot have reached it.
                index, slots = sent[run.unit]
                unit = out[index]
                unit.finished = run.times[-1]
                cancelled_from = run.cancelled_from
                unit.replies = [reply(state, s, encoding, stale, cancelled_from) for s in slots]
                if progress is not None:
                    progress()
                if settled is not None:
                    settled(index, unit)

            reading.progress = synced
            try:
                while reading.unit < len(sent):
                    await conn.wait(read(pgconn, reading, state.tx))
                    if reading.stop is not None:
                        await _stop(conn, reading)
            finally:
                # (a cycle, reading -> synced -> reading, would keep every result read,
                # however large, until the cyclic collector ran)
                reading.progress = None
        pgconn.exit_pipeline_mode()
    except BaseException:
        await conn.close()
        raise
    for name in stale:
        if not conn.closed:  # still planned for the old schema: drop it on the server
            await conn.execute(f"DEALLOCATE {name.decode()}", prepare=False)
    if not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        retired = deallocations(state)
        if retired is not None:
            await _deallocate(conn, retired)
    return out


async def _deallocate(conn: AsyncConnection[Any], statements: str) -> None:
    """The names given up, dropped on the server: in one round trip, or (when one of them
    the server had lost already) one at a time, past those it no longer has."""
    try:
        await conn.execute(statements, prepare=False)
    except psycopg.errors.InvalidSqlStatementName:
        for statement in statements.split("; "):
            with contextlib.suppress(psycopg.errors.InvalidSqlStatementName):
                await conn.execute(statement, prepare=False)


async def _stop(conn: AsyncConnection[Any], reading: Reading) -> None:
    """Cancel on the server the statement that went over its limit; its other rows, up to
    the cancel's error, are then read and dropped."""
    slot = reading.stop
    assert slot is not None
    reading.stop = None
    slot.stopped = True
    if reading.cancelled_from is None:
        reading.cancelled_from = slot.unit
    try:
        await conn.cancel_safe(timeout=CANCEL_TIMEOUT_S)
    except psycopg.Error as exc:  # its rows are read to their end instead
        logger.warning("could not cancel a statement over its limit: %s", exc)


async def describe(
    conn: AsyncConnection[Any], sql: str, params: Sequence[Any]
) -> list[tuple[str, int]]:
    """The result columns (name, type OID) a statement would return, from the server's own
    description of it (unnamed, so nothing stays prepared), in one round trip. Raises what
    the server raised for it, as psycopg does."""
    state = state_of(conn)
    dumped = dump(state, [Command(sql, params)])
    if isinstance(dumped, tuple):
        raise dumped[1]
    _, types, _ = dumped[0]
    pgconn = conn.pgconn
    pgconn.enter_pipeline_mode()
    try:
        pgconn.send_prepare(b"", sql.encode(), types)
        pgconn.send_describe_prepared(b"")
        pgconn.pipeline_sync()
        groups, _ = await conn.wait(collect(pgconn, 1, None))
        pgconn.exit_pipeline_mode()
    except BaseException:
        await conn.close()
        raise
    results = [r for group in groups for r in group if r.status != SYNC]
    for result in results:
        if result.status not in OK:
            raise error_of(result, conn.info.encoding)
    described = results[-1]
    return [
        ((described.fname(i) or b"").decode(), described.ftype(i)) for i in range(described.nfields)
    ]
