"""Pipelined execution on one connection: many statements, one write, one wait.

Built on psycopg's libpq layer (pipeline mode, prepared statements, its Transformer for
parameters and rows and its C result-fetching generators). A *unit* is a list of commands
followed by one Sync: the commands of a unit share an implicit transaction (or the explicit
one they open), and a Sync ends it, so separate units commit or fail on their own. After an
error the server skips the rest of its unit; each command reports its own result either way.

Used by the multiplexing lanes (one unit per request) and by /v1/transaction and other
wrapped statements (one unit: BEGIN, the limits, the statements, COMMIT, in one round trip).

A statement text is prepared by name on a connection the second time it runs there (one-off
texts stay unnamed), up to MAX_PREPARED names per connection. A named statement the server
no longer has (26000), or whose result type a schema change altered (0A000), is dropped and
reported `stale`: it did not run, and the caller may send it again.

Results are read in chunks (libpq's chunked rows mode, CHUNK_ROWS rows per result), so what
a statement returns is never held whole: each command keeps what its Keep allows (max_rows
+ 1 rows within the request's byte allowance) and drops the rest as it comes. A command
whose Keep says `stop` is cancelled on the server once it is over (psycopg's cancel_safe)
and the server is still sending (or DRAIN_CHUNKS more chunks came), so the server's work
ends there too; a unit after it that fails as cancelled (the cancel came when that one had
started) is reported `stale`, to be sent again.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import orjson
import psycopg
from psycopg import AsyncConnection, abc, pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.generators import fetch, fetch_many, send
from psycopg.pq.abc import PGconn, PGresult

from app.sql import text_output
from app.sql.columns import TypeNames
from app.sql.results import RowFormat, StatementResult, statement_result

logger = logging.getLogger(__name__)

# Rows per result while a statement's rows are read (libpq's chunked rows mode).
CHUNK_ROWS = 64
# A chunk whose rows average more than this grew libpq's input buffer, which libpq keeps
# for the connection's life: its connection is closed after use, not kept.
LARGE_ROW_BYTES = 1024 * 1024
# Chunks of a statement over its limit read and dropped at most, while they are already
# in, before it is cancelled: a result that ends just past its limit costs no cancel.
DRAIN_CHUNKS = 4
# How long asking the server to cancel a statement over its limit may take.
CANCEL_TIMEOUT_S = 5.0
# Statements prepared by name per connection at most; the rest run unnamed.
MAX_PREPARED = 256
# Texts whose uses are counted per connection at most (to prepare on the second use).
MAX_SEEN = 1024

OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)
TUPLES = pq.ExecStatus.TUPLES_OK
_CHUNK = pq.ExecStatus.TUPLES_CHUNK
_CANCELED = "57014"
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
_COPY = (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH)
# A named statement that did not run: gone from the server, or planned for another schema.
_STALE = ("26000", "0A000")
_NOT_RUN = "not run: an earlier statement failed"
_names = itertools.count()

Key = tuple[str, Any, str]


@dataclass(slots=True)
class Allowance:
    """Bytes of rows (as JSON) a request may still keep, shared by its statements."""

    bytes: int


@dataclass(frozen=True, slots=True)
class Keep:
    """What to keep of a statement's rows: `rows` at most (max_rows + 1: the one more says
    the answer was cut), within `allowance`. With `stop`, a statement over its limit is
    cancelled on the server: only for one whose end loses nothing (a read, run last)."""

    rows: int
    allowance: Allowance | None = None
    stop: bool = False
    # Rows as PostgreSQL's own text (POST /sql), not loaded as JSON values.
    text: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    """One statement and its parameters; `prepare=False` for texts sent once (BEGIN...).
    `keep` None: its rows are not kept (BEGIN, the limits, COMMIT)."""

    sql: str
    params: Sequence[Any] = ()
    prepare: bool = True
    keep: Keep | None = None
    # The output styles it runs under ("": mirrorpool's pinned ones). A plan may hold values
    # printed under them (a folded `'1 day'::interval::text`): names prepared under one set
    # of styles are never used under another.
    styles: str = ""


@dataclass(slots=True)
class Reply:
    """What came back for one command: its rows and the result that describes them (the
    last, or the first chunk of a statement stopped), or the error it raised."""

    result: PGresult | None = None
    error: psycopg.Error | None = None
    stale: bool = False
    rows: list[Any] = field(default_factory=list)
    # Rows were left out (beyond max_rows + 1, or the allowance).
    cut: bool = False
    # Rows the server sent, kept or not.
    seen: int = 0
    # The statement was cancelled on the server once it was over its limit.
    stopped: bool = False
    # Its command tag, and the rows it names (libpq puts it on the last chunk).
    command: str | None = None
    rowcount: int | None = None
    # A row of it was so large that its connection should not be kept (LARGE_ROW_BYTES).
    oversized: bool = False


@dataclass(slots=True)
class UnitReply:
    """A unit's replies, one per command, and when its Sync came back (monotonic s)."""

    replies: list[Reply]
    finished: float = 0.0

    @property
    def stale(self) -> bool:
        """True when a named statement of the unit was stale: nothing of it ran."""
        return any(r.stale for r in self.replies)


@dataclass(slots=True)
class _Slot:
    """A command in flight: the name it runs under, whether it prepares it, and what of its
    results is kept."""

    key: Key
    name: bytes | None
    prepares: bool
    keep: Keep | None
    unit: int
    prepared: PGresult | None = None
    # Its first result with rows (describes them), its last, and its end or its error.
    first: PGresult | None = None
    last: PGresult | None = None
    final: PGresult | None = None
    failure: PGresult | None = None
    rows: list[Any] = field(default_factory=list)
    seen: int = 0
    cut: bool = False
    stopped: bool = False
    chunked: bool = False
    oversized: bool = False
    # Chunks read and dropped since it went over its limit.
    dropped: int = 0

    def take(self, result: PGresult, tx: abc.Transformer) -> bool:
        """Keep what the Keep allows of one result with rows (a chunk, or the end); True
        when the statement is over its limit, may be stopped, and has more rows to come."""
        if self.first is None:
            self.first = result
        count = result.ntuples
        if not count:
            return False
        self.last = result
        self.seen += count
        keep = self.keep
        if keep is None:
            return False
        if self.cut:
            self.dropped += 1
            return keep.stop and not self.stopped and result.status == _CHUNK
        room = keep.rows - len(self.rows)
        wanted = count if count < room else room
        rows = text_output.rows_of(result, wanted) if keep.text else _load(tx, result, wanted)
        allowance = keep.allowance
        if allowance is not None:
            size = len(orjson.dumps(rows))
            if size > LARGE_ROW_BYTES * len(rows):
                self.oversized = True
            if size > allowance.bytes:
                rows, allowance.bytes = _within(rows, allowance.bytes)
                self.cut = True
            else:
                allowance.bytes -= size
        self.rows += rows
        if len(self.rows) >= keep.rows:
            self.cut = True
        return self.cut and keep.stop and not self.stopped and result.status == _CHUNK


class _Reading:
    """Where a run's reading is (which unit, which command), and a statement to stop on
    the server once one is over its limit."""

    def __init__(self, units: list[list[_Slot]], progress: Callable[[], None] | None) -> None:
        self.units = units
        self.unit = 0
        self.slot = 0
        self.progress = progress
        self.times: list[float] = []
        self.flushed = False
        self.stop: _Slot | None = None
        # The first unit a cancel was sent for: a later one that fails as cancelled may
        # have been hit by it instead.
        self.cancelled_from: int | None = None


@dataclass(slots=True)
class ConnState:
    """What a connection carries for pipelines: a transformer and its prepared names."""

    # Built from the connection's adapters, not the connection: the state must not keep
    # its connection alive (the WeakKeyDictionary below would never let go of it).
    tx: abc.Transformer
    prepared: dict[Key, bytes] = field(default_factory=dict)
    seen: dict[Key, int] = field(default_factory=dict)


_states: WeakKeyDictionary[AsyncConnection[Any], ConnState] = WeakKeyDictionary()


def state_of(conn: AsyncConnection[Any]) -> ConnState:
    """The connection's pipeline state, made on first use."""
    state = _states.get(conn)
    if state is None:
        state = _states[conn] = ConnState(Transformer(conn.adapters))
    return state


def forget_prepared(conn: AsyncConnection[Any]) -> None:
    """The session was reset (DISCARD ALL): none of the names prepared on it exist now."""
    state = _states.get(conn)
    if state is not None:
        state.prepared.clear()
        state.seen.clear()


async def run_units(
    conn: AsyncConnection[Any],
    units: Sequence[Sequence[Command]],
    progress: Callable[[], None] | None = None,
) -> list[UnitReply]:
    """Send every unit at once, each closed by a Sync, and return each command's reply.

    `progress` is called as each unit's Sync comes back. A command whose parameters cannot
    be sent gets a Reply with that error, its unit is not sent at all, and the unit's other
    commands get empty Replies. A broken connection raises (psycopg.Error or OSError), and
    so does cancellation; the connection is then closed, its state being unknown.
    """
    state = state_of(conn)
    pgconn = conn.pgconn
    out = [UnitReply([]) for _ in units]
    sent: list[tuple[int, list[_Slot]]] = []
    naming: dict[Key, bytes] = {}  # names prepared by this run, shared by its later units
    reading: _Reading | None = None
    pgconn.enter_pipeline_mode()
    try:
        for index, unit in enumerate(units):
            dumped = _dump(state, unit)
            if isinstance(dumped, tuple):
                failed, error = dumped
                # Nothing of this unit is sent: only the culprit reports anything.
                out[index].replies = [
                    Reply(error=error if i == failed else None) for i in range(len(unit))
                ]
                continue
            slots = [
                _send(pgconn, state, naming, c, d, len(sent))
                for c, d in zip(unit, dumped, strict=True)
            ]
            pgconn.pipeline_sync()
            sent.append((index, slots))
        if sent:
            reading = _Reading([slots for _, slots in sent], progress)
            while reading.unit < len(sent):
                await conn.wait(_read(pgconn, reading, state.tx))
                if reading.stop is not None:
                    await _stop(conn, reading)
            for (index, _), finished in zip(sent, reading.times, strict=True):
                out[index].finished = finished
        pgconn.exit_pipeline_mode()
    except BaseException:
        await conn.close()
        raise
    encoding = conn.info.encoding
    stale: list[bytes] = []
    cancelled_from = reading.cancelled_from if reading is not None else None
    for index, slots in sent:
        out[index].replies = [
            _reply(state, slot, encoding, stale, cancelled_from) for slot in slots
        ]
    for name in stale:
        if not conn.closed:  # still planned for the old schema: drop it on the server
            await conn.execute(f"DEALLOCATE {name.decode()}", prepare=False)
    return out


async def _stop(conn: AsyncConnection[Any], reading: _Reading) -> None:
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
    dumped = _dump(state, [Command(sql, params)])
    if isinstance(dumped, tuple):
        raise dumped[1]
    _, types, _ = dumped[0]
    pgconn = conn.pgconn
    pgconn.enter_pipeline_mode()
    try:
        pgconn.send_prepare(b"", sql.encode(), types)
        pgconn.send_describe_prepared(b"")
        pgconn.pipeline_sync()
        groups, _ = await conn.wait(_collect(pgconn, 1, None))
        pgconn.exit_pipeline_mode()
    except BaseException:
        await conn.close()
        raise
    results = [r for group in groups for r in group if r.status != _SYNC]
    for result in results:
        if result.status not in OK:
            raise _error_of(result, conn.info.encoding)
    described = results[-1]
    return [
        ((described.fname(i) or b"").decode(), described.ftype(i)) for i in range(described.nfields)
    ]


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


def _load(tx: abc.Transformer, result: PGresult, count: int) -> list[Any]:
    """The first `count` rows of a result, as tuples of JSON-ready values."""
    if count <= 0:
        return []
    tx.set_pgresult(result)
    try:
        return tx.load_rows(0, count, tuple)
    finally:
        tx.set_pgresult(None)


def _within(rows: list[Any], room: int) -> tuple[list[Any], int]:
    """The leading rows whose JSON fits in `room` bytes, and the room left after them."""
    for index, row in enumerate(rows):
        size = len(orjson.dumps(row)) + 1
        if size > room:
            return rows[:index], room
        room -= size
    return rows, room


def _dump(state: ConnState, unit: Sequence[Command]) -> list[Any] | tuple[int, psycopg.Error]:
    """Each command's (params, types, formats), or the first that fails and its error."""
    tx = state.tx
    dumped = []
    for index, command in enumerate(unit):
        try:
            params = tx.dump_sequence(command.params, [PyFormat.AUTO] * len(command.params))
        except psycopg.Error as exc:  # a value psycopg cannot send (a NUL byte, ...)
            return index, exc
        except Exception as exc:  # a dumper's own failure: this request's, not the batch's
            return index, psycopg.DataError(f"a parameter cannot be sent: {exc}")
        dumped.append((params, tx.types, tx.formats))
    return dumped


def _send(
    pgconn: PGconn,
    state: ConnState,
    naming: dict[Key, bytes],
    command: Command,
    dumped: Any,
    unit: int,
) -> _Slot:
    params, types, formats = dumped
    key = (command.sql, types, command.styles)
    name = state.prepared.get(key) or naming.get(key) if command.prepare else None
    prepares = False
    if name is None and command.prepare and _second_use(state, key):
        name = naming[key] = f"_mp_{next(_names)}".encode()
        prepares = True
        pgconn.send_prepare(name, command.sql.encode(), types)
    if name is None:
        pgconn.send_query_params(command.sql.encode(), params, types, formats)
    else:
        pgconn.send_query_prepared(name, params, formats)
    return _Slot(key, name, prepares, command.keep, unit)


def _second_use(state: ConnState, key: Key) -> bool:
    if len(state.prepared) >= MAX_PREPARED:
        return False
    uses = state.seen.get(key, 0) + 1
    if uses == 1 and len(state.seen) >= MAX_SEEN:
        state.seen.clear()
    state.seen[key] = uses
    return uses >= 2


def _collect(
    pgconn: PGconn, syncs: int, progress: Callable[[], None] | None
) -> Generator[Any, Any, tuple[list[list[PGresult]], list[float]]]:
    """Flush the pipeline and read every result group up to the last of `syncs` Syncs,
    noting when each Sync came back."""
    yield from send(pgconn)
    groups: list[list[PGresult]] = []
    times: list[float] = []
    while syncs:
        results = yield from fetch_many(pgconn)
        if not results:
            raise psycopg.OperationalError("the pipeline ended before its last Sync")
        status = results[0].status
        if status in _COPY:
            # libpq would hand back the same COPY result forever: give the connection up.
            raise psycopg.NotSupportedError("COPY to or from the client cannot be pipelined")
        if status == _SYNC:
            syncs -= 1
            times.append(time.monotonic())
            if progress is not None:
                progress()
        groups.append(results)
    return groups, times


def _read(pgconn: PGconn, reading: _Reading, tx: abc.Transformer) -> Generator[Any, Any, None]:
    """Flush the pipeline, then read every result in order, each chunk kept or dropped as
    it comes; return early when a statement over its limit is to be stopped (called again
    to go on from there)."""
    if not reading.flushed:
        yield from send(pgconn)
        reading.flushed = True
    units = reading.units
    while reading.unit < len(units):
        slots = units[reading.unit]
        while reading.slot < len(slots):
            slot = slots[reading.slot]
            if slot.prepares and slot.prepared is None:
                prepared = yield from fetch_many(pgconn)
                slot.prepared = prepared[0] if prepared else None
            if slot.keep is None:  # our own command (BEGIN, the limits, COMMIT): read whole
                results = yield from fetch_many(pgconn)
                for result in results:
                    _settle_result(slot, result, tx)
                reading.slot += 1
                continue
            if not slot.chunked:
                slot.chunked = True
                # Before its first result is asked for: its rows then come in chunks.
                # libpq refuses only for a command that returns none (read whole, then).
                with suppress(psycopg.OperationalError):
                    pgconn.set_chunked_rows_mode(CHUNK_ROWS)
            while True:
                result = yield from fetch(pgconn)
                if result is None:  # this command's results are over
                    break
                if _settle_result(slot, result, tx) and (
                    slot.dropped >= DRAIN_CHUNKS or _still_sending(pgconn)
                ):
                    reading.stop = slot
                    return
            reading.slot += 1
        result = yield from fetch(pgconn)
        if result is None or result.status != _SYNC:
            raise psycopg.OperationalError("the pipeline ended before its last Sync")
        reading.times.append(time.monotonic())
        if reading.progress is not None:
            reading.progress()
        reading.unit += 1
        reading.slot = 0


def _still_sending(pgconn: PGconn) -> bool:
    """True when the next result is not in yet, once what has arrived is read: the server
    is still producing rows."""
    if not pgconn.is_busy():
        return False
    pgconn.consume_input()
    return bool(pgconn.is_busy())


def _settle_result(slot: _Slot, result: PGresult, tx: abc.Transformer) -> bool:
    """File one result of a command; True when the command is to be stopped (_Slot.take)."""
    status = result.status
    if status == _CHUNK:
        return slot.take(result, tx)
    if status == TUPLES:
        slot.final = result
        return slot.take(result, tx)
    if status in OK:
        slot.final = result
    elif status in _COPY:
        # libpq would hand back the same COPY result forever: give the connection up.
        raise psycopg.NotSupportedError("COPY to or from the client cannot be pipelined")
    else:
        slot.failure = result
    return False


def _reply(
    state: ConnState, slot: _Slot, encoding: str, stale: list[bytes], cancelled_from: int | None
) -> Reply:
    if slot.prepares:
        prepared = slot.prepared
        if prepared is None or prepared.status not in OK:
            return Reply(error=_error_of(prepared, encoding))
        assert slot.name is not None
        state.prepared[slot.key] = slot.name
    if slot.failure is None and slot.final is not None:
        return _answered(slot, slot.final)
    error = _error_of(slot.failure, encoding)
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


def _answered(slot: _Slot, result: PGresult | None) -> Reply:
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


def _error_of(result: PGresult | None, encoding: str) -> psycopg.Error:
    if result is None:
        return psycopg.OperationalError("the server sent no result for the statement")
    if result.status == _ABORTED:
        return psycopg.errors.PipelineAborted(_NOT_RUN)
    return psycopg.errors.error_from_result(result, encoding=encoding)
