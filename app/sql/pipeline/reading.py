"""Reading a pipeline's results in order, each statement's rows in chunks kept or dropped as
they come (its Keep), and knowing when one over its limit is to be stopped on the server."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg import abc, pq
from psycopg.generators import fetch, fetch_many, send
from psycopg.pq.abc import PGconn, PGresult

from app.sql import text_output
from app.sql.pipeline.commands import Keep, Key

# Rows per result while a statement's rows are read (libpq's chunked rows mode).
CHUNK_ROWS = 64
# A chunk whose rows average more than this grew libpq's input buffer, which libpq keeps
# for the connection's life: its connection is closed after use, not kept.
LARGE_ROW_BYTES = 1024 * 1024
# Chunks of a statement over its limit read and dropped at most, while they are already
# in, before it is cancelled: a result that ends just past its limit costs no cancel.
DRAIN_CHUNKS = 4
# At most what the description of one column takes in a text answer besides its name
# (Neon's `fields`: type, table and column numbers, size, modifier, format).
FIELD_BYTES = 160

OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)
TUPLES = pq.ExecStatus.TUPLES_OK
CHUNK = pq.ExecStatus.TUPLES_CHUNK
SYNC = pq.ExecStatus.PIPELINE_SYNC
FAILED = pq.ExecStatus.FATAL_ERROR
_SEVERITY = pq.DiagnosticField.SEVERITY_NONLOCALIZED
_ENDING = (b"FATAL", b"PANIC")
_COPY = (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH)


@dataclass(slots=True)
class Slot:
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
    # What each row takes in the answer beyond its JSON array (its columns' names, when
    # Keep.named), known from the first result.
    per_row: int = 0

    def take(self, result: PGresult, tx: abc.Transformer) -> bool:
        """Keep what the Keep allows of one result with rows (a chunk, or the end); True
        when the statement is over its limit, may be stopped, and has more rows to come."""
        if self.first is None:
            self.first = result
            self._describe(result)
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
            return keep.stop and not self.stopped and result.status == CHUNK
        room = keep.rows - len(self.rows)
        wanted = count if count < room else room
        rows = text_output.rows_of(result, wanted) if keep.text else load(tx, result, wanted)
        allowance = keep.allowance
        if allowance is not None:
            size = len(orjson.dumps(rows))
            if size > LARGE_ROW_BYTES * len(rows):
                self.oversized = True
            size += self.per_row * len(rows)
            if size > allowance.bytes:
                rows, allowance.bytes = _within(rows, allowance.bytes, self.per_row)
                self.cut = True
            else:
                allowance.bytes -= size
        self.rows += rows
        if len(self.rows) >= keep.rows:
            self.cut = True
        return self.cut and keep.stop and not self.stopped and result.status == CHUNK

    def _describe(self, result: PGresult) -> None:
        """What the answer adds to the rows, from their description: the columns' names in
        every row (Keep.named), and each column's description (Keep.text)."""
        keep = self.keep
        if keep is None or keep.allowance is None or not (keep.named or keep.text):
            return
        names = [
            len(orjson.dumps((result.fname(i) or b"").decode())) for i in range(result.nfields)
        ]
        if keep.named:
            self.per_row = sum(names) + len(names)  # `"name":` before each value
        if keep.text:
            keep.allowance.bytes -= sum(names) + FIELD_BYTES * len(names)


class Reading:
    """Where a run's reading is (which unit, which command), and a statement to stop on
    the server once one is over its limit."""

    def __init__(self, units: list[list[Slot]], progress: Callable[[], None] | None) -> None:
        self.units = units
        self.unit = 0
        self.slot = 0
        self.progress = progress
        self.times: list[float] = []
        self.flushed = False
        self.stop: Slot | None = None
        # The first unit a cancel was sent for: a later one that fails as cancelled may
        # have been hit by it instead.
        self.cancelled_from: int | None = None


def load(tx: abc.Transformer, result: PGresult, count: int) -> list[Any]:
    """The first `count` rows of a result, as tuples of JSON-ready values."""
    if count <= 0:
        return []
    tx.set_pgresult(result)
    try:
        return tx.load_rows(0, count, tuple)
    finally:
        tx.set_pgresult(None)


def _within(rows: list[Any], room: int, per_row: int = 0) -> tuple[list[Any], int]:
    """The leading rows whose JSON (and `per_row` more each) fits in `room` bytes, and the
    room left after them."""
    for index, row in enumerate(rows):
        size = len(orjson.dumps(row)) + 1 + per_row
        if size > room:
            return rows[:index], room
        room -= size
    return rows, room


def collect(
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
        if status == SYNC:
            syncs -= 1
            times.append(time.monotonic())
            if progress is not None:
                progress()
        groups.append(results)
    return groups, times


def read(pgconn: PGconn, reading: Reading, tx: abc.Transformer) -> Generator[Any, Any, None]:
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
                _unless_ended(slot, tx)
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
            _unless_ended(slot, tx)
        yield from _read_sync(pgconn, slots, tx)
        reading.times.append(time.monotonic())
        if reading.progress is not None:
            reading.progress()
        reading.unit += 1
        reading.slot = 0


def _unless_ended(slot: Slot, tx: abc.Transformer) -> None:
    """After a FATAL error the server ends the session and answers no Sync: the run is
    over, and so is the connection, as if it were lost there. Its backend may live on
    meanwhile (dropping its temporary tables waits for another session's lock on a parent),
    and a pooler keeps its server connection for it until its client leaves."""
    failure = slot.failure
    if failure is None or failure.error_field(_SEVERITY) not in _ENDING:
        return
    # (as a lost connection, which it is, not as the error with its code: a write sent
    # before it is of unknown outcome, as when the server closes the socket)
    message = failure.error_message.decode(tx.encoding, "replace").strip()
    raise psycopg.OperationalError(f"the server ended the session: {message}")


def _read_sync(pgconn: PGconn, slots: list[Slot], tx: abc.Transformer) -> Generator[Any, Any, None]:
    """The unit's Sync. An error in its place is the unit's implicit commit failing there
    (code of a deferred trigger): the unit is undone, and its last command reports why."""
    result = yield from fetch(pgconn)
    if result is not None and result.status == FAILED and slots:
        slots[-1].failure = result
        _unless_ended(slots[-1], tx)  # (under exit_on_error, no Sync follows either)
        result = yield from fetch(pgconn)
        if result is None:  # (libpq may end the error's results before the Sync's)
            result = yield from fetch(pgconn)
    if result is None or result.status != SYNC:
        raise psycopg.OperationalError("the pipeline ended before its last Sync")


def _still_sending(pgconn: PGconn) -> bool:
    """True when the next result is not in yet, once what has arrived is read: the server
    is still producing rows."""
    if not pgconn.is_busy():
        return False
    pgconn.consume_input()
    return bool(pgconn.is_busy())


def _settle_result(slot: Slot, result: PGresult, tx: abc.Transformer) -> bool:
    """File one result of a command; True when the command is to be stopped (Slot.take)."""
    status = result.status
    if status == CHUNK:
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
