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
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from psycopg import AsyncConnection, abc, pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.generators import fetch_many, send
from psycopg.pq.abc import PGconn, PGresult

from app.sql.columns import TypeNames
from app.sql.results import RowFormat, StatementResult, statement_result

# Statements prepared by name per connection at most; the rest run unnamed.
MAX_PREPARED = 256
# Texts whose uses are counted per connection at most (to prepare on the second use).
MAX_SEEN = 1024

OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)
TUPLES = pq.ExecStatus.TUPLES_OK
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
_COPY = (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH)
# A named statement that did not run: gone from the server, or planned for another schema.
_STALE = ("26000", "0A000")
_NOT_RUN = "not run: an earlier statement failed"
_names = itertools.count()

Key = tuple[str, Any, str]


@dataclass(frozen=True, slots=True)
class Command:
    """One statement and its parameters; `prepare=False` for texts sent once (BEGIN...)."""

    sql: str
    params: Sequence[Any] = ()
    prepare: bool = True
    # The output styles it runs under ("": mirrorpool's pinned ones). A plan may hold values
    # printed under them (a folded `'1 day'::interval::text`): names prepared under one set
    # of styles are never used under another.
    styles: str = ""


@dataclass(slots=True)
class Reply:
    """What came back for one command: its result, or the error it raised."""

    result: PGresult | None = None
    error: psycopg.Error | None = None
    stale: bool = False


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
    """A command in flight: the name it runs under, whether it prepares it, its results."""

    key: Key
    name: bytes | None
    prepares: bool
    results: list[PGresult] = field(default_factory=list)


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
            slots = [_send(pgconn, state, naming, c, d) for c, d in zip(unit, dumped, strict=True)]
            pgconn.pipeline_sync()
            sent.append((index, slots))
        if sent:
            groups, times = await conn.wait(_collect(pgconn, len(sent), progress))
            _distribute([slots for _, slots in sent], groups)
            for (index, _), finished in zip(sent, times, strict=True):
                out[index].finished = finished
        pgconn.exit_pipeline_mode()
    except BaseException:
        await conn.close()
        raise
    encoding = conn.info.encoding
    stale: list[bytes] = []
    for index, slots in sent:
        out[index].replies = [_reply(state, slot, encoding, stale) for slot in slots]
    for name in stale:
        if not conn.closed:  # still planned for the old schema: drop it on the server
            await conn.execute(f"DEALLOCATE {name.decode()}", prepare=False)
    return out


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
    result: PGresult,
    max_rows: int,
    row_format: RowFormat,
) -> StatementResult:
    """A statement's successful result as the API reports it: its columns, up to
    `max_rows` rows (one more fetched says it was cut), its command tag."""
    command = result.command_status.decode() if result.command_status else None
    columns = await types.of_result(conn, node, result)
    rows = _load_rows(conn, result, max_rows + 1)
    return statement_result(columns, rows, command, result.command_tuples, max_rows, row_format)


def _load_rows(conn: AsyncConnection[Any], result: PGresult, limit: int) -> list[Any]:
    """Up to `limit` rows of a result, as tuples of JSON-ready values."""
    if result.status != TUPLES:
        return []
    tx = state_of(conn).tx
    tx.set_pgresult(result)
    try:
        return tx.load_rows(0, min(result.ntuples, limit), tuple)
    finally:
        tx.set_pgresult(None)


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
    pgconn: PGconn, state: ConnState, naming: dict[Key, bytes], command: Command, dumped: Any
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
    return _Slot(key, name, prepares)


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


def _distribute(units: list[list[_Slot]], groups: list[list[PGresult]]) -> None:
    """Hand each command the results that came back for it, in order, unit by unit."""
    unit_iter = iter(units)
    slots = iter(next(unit_iter))
    expecting: list[_Slot] = []
    for results in groups:
        if results[0].status == _SYNC:
            slots = iter(next(unit_iter, []))
            continue
        if not expecting:
            slot = next(slots)
            expecting = [slot, slot] if slot.prepares else [slot]
        expecting.pop().results.extend(results)


def _reply(state: ConnState, slot: _Slot, encoding: str, stale: list[bytes]) -> Reply:
    results = slot.results
    if slot.prepares:
        prepared, results = results[0], results[1:]
        if prepared.status not in OK:
            return Reply(error=_error_of(prepared, encoding))
        assert slot.name is not None
        state.prepared[slot.key] = slot.name
    result = results[0] if results else None
    if result is not None and result.status in OK:
        return Reply(result=result)
    error = _error_of(result, encoding)
    if slot.name is not None and not slot.prepares and error.sqlstate in _STALE:
        if state.prepared.pop(slot.key, None) is not None and error.sqlstate == "0A000":
            stale.append(slot.name)
        return Reply(error=error, stale=True)
    return Reply(error=error)


def _error_of(result: PGresult | None, encoding: str) -> psycopg.Error:
    if result is None:
        return psycopg.OperationalError("the server sent no result for the statement")
    if result.status == _ABORTED:
        return psycopg.errors.PipelineAborted(_NOT_RUN)
    return psycopg.errors.error_from_result(result, encoding=encoding)
