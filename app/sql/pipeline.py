"""Pipelined execution on one connection: many statements, one write, one wait.

Built on psycopg's libpq layer (pipeline mode, prepared statements, its Transformer for
parameters and rows and its C result-fetching generators). A *unit* is a list of commands
followed by one Sync: the commands of a unit share an implicit transaction (or the explicit
one they open), and a Sync ends it, so separate units commit or fail on their own. After an
error the server skips the rest of its unit; each command reports its own result either way.

Used by the multiplexing lanes (one unit per request) and by /v1/transaction (one unit:
BEGIN, the statements, COMMIT, in one round trip).
"""

from __future__ import annotations

import itertools
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from psycopg import AsyncConnection, abc, pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.generators import fetch_many, send
from psycopg.pq.abc import PGresult

# Statements prepared by name per connection at most; the rest run unnamed.
MAX_PREPARED = 256

OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)
TUPLES = pq.ExecStatus.TUPLES_OK
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
_names = itertools.count()
_NOT_RUN = "not run: an earlier statement failed"


@dataclass(frozen=True, slots=True)
class Command:
    """One statement and its parameters; `prepare=False` for one-off texts (BEGIN...)."""

    sql: str
    params: Sequence[Any] = ()
    prepare: bool = True


@dataclass(slots=True)
class Reply:
    """What came back for one command: its result, or the error it raised."""

    result: PGresult | None = None
    error: psycopg.Error | None = None


@dataclass(slots=True)
class _Slot:
    """A command in flight: the name it prepares, if it does, and its results."""

    prepares: bytes | None
    key: tuple[str, Any]
    results: list[PGresult] = field(default_factory=list)


@dataclass(slots=True)
class ConnState:
    """What a connection carries for pipelines: its transformer and prepared statements."""

    tx: abc.Transformer
    prepared: dict[tuple[str, Any], bytes] = field(default_factory=dict)


_states: WeakKeyDictionary[AsyncConnection[Any], ConnState] = WeakKeyDictionary()


def state_of(conn: AsyncConnection[Any]) -> ConnState:
    """The connection's pipeline state, made on first use."""
    state = _states.get(conn)
    if state is None:
        state = _states[conn] = ConnState(Transformer.from_context(conn))
    return state


async def run_units(
    conn: AsyncConnection[Any], units: Sequence[Sequence[Command]]
) -> list[list[Reply]]:
    """Send every unit at once, each closed by a Sync, and return each command's reply.

    A command whose parameters cannot be sent gets a Reply with that error, its unit is not
    sent at all, and the unit's other commands get empty Replies. A broken connection
    raises (psycopg.Error or OSError), and so does cancellation; the connection is then
    closed, its state being unknown.
    """
    state = state_of(conn)
    pgconn = conn.pgconn
    replies: list[list[Reply]] = [[] for _ in units]
    sent: list[tuple[int, list[_Slot]]] = []
    pgconn.enter_pipeline_mode()
    try:
        for index, unit in enumerate(units):
            dumped = _dump(state, unit)
            if isinstance(dumped, tuple):
                failed, error = dumped
                # Nothing of this unit is sent: only the culprit reports anything.
                replies[index] = [
                    Reply(error=error if i == failed else None) for i in range(len(unit))
                ]
                continue
            sent.append(
                (index, [_send(pgconn, state, c, p) for c, p in zip(unit, dumped, strict=True)])
            )
            pgconn.pipeline_sync()
        if sent:
            groups = await conn.wait(_collect(pgconn, len(sent)))
            _distribute([slots for _, slots in sent], groups)
        pgconn.exit_pipeline_mode()
    except BaseException:
        await conn.close()
        raise
    encoding = conn.info.encoding
    for index, slots in sent:
        replies[index] = [_reply(state, slot, encoding) for slot in slots]
    return replies


def forget_prepared(conn: AsyncConnection[Any]) -> None:
    """The server dropped our prepared statements (DEALLOCATE, DISCARD): prepare anew."""
    state = _states.get(conn)
    if state is not None:
        state.prepared.clear()


def _dump(state: ConnState, unit: Sequence[Command]) -> list[Any] | tuple[int, psycopg.Error]:
    """Each command's (params, types, formats), or the first that fails and its error."""
    tx = state.tx
    dumped = []
    for index, command in enumerate(unit):
        try:
            params = tx.dump_sequence(command.params, [PyFormat.AUTO] * len(command.params))
        except psycopg.Error as exc:  # a value psycopg cannot send (a NUL byte, ...)
            return index, exc
        dumped.append((params, tx.types, tx.formats))
    return dumped


def _send(pgconn: Any, state: ConnState, command: Command, dumped: Any) -> _Slot:
    params, types, formats = dumped
    key = (command.sql, types)
    name = state.prepared.get(key) if command.prepare else None
    prepares = None
    if name is None and command.prepare and len(state.prepared) < MAX_PREPARED:
        name = prepares = f"_mp_{next(_names)}".encode()
        pgconn.send_prepare(name, command.sql.encode(), types)
    if name is None:
        pgconn.send_query_params(command.sql.encode(), params, types, formats)
    else:
        pgconn.send_query_prepared(name, params, formats)
    return _Slot(prepares, key)


def _collect(pgconn: Any, syncs: int) -> Generator[Any, Any, list[list[PGresult]]]:
    """Flush the pipeline and read every result group up to the last of `syncs` Syncs."""
    yield from send(pgconn)
    groups: list[list[PGresult]] = []
    while syncs:
        results = yield from fetch_many(pgconn)
        if not results:
            raise psycopg.OperationalError("the pipeline ended before its last Sync")
        if results[0].status == _SYNC:
            syncs -= 1
        groups.append(results)
    return groups


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
            expecting = [slot, slot] if slot.prepares is not None else [slot]
        expecting.pop(0).results.extend(results)


def _reply(state: ConnState, slot: _Slot, encoding: str) -> Reply:
    results = slot.results
    if slot.prepares is not None:
        prepared, results = results[0], results[1:]
        if prepared.status not in OK:
            return Reply(error=_error_of(prepared, encoding))
        state.prepared[slot.key] = slot.prepares
    result = results[0] if results else None
    if result is None or result.status not in OK:
        return Reply(error=_error_of(result, encoding))
    return Reply(result=result)


def _error_of(result: PGresult | None, encoding: str) -> psycopg.Error:
    if result is None:
        return psycopg.OperationalError("the server sent no result for the statement")
    if result.status == _ABORTED:
        return psycopg.errors.PipelineAborted(_NOT_RUN)
    return psycopg.errors.error_from_result(result, encoding=encoding)


def load_rows(conn: AsyncConnection[Any], result: PGresult, limit: int) -> list[Any]:
    """Up to `limit` rows of a result, as tuples of JSON-ready values."""
    if result.status != TUPLES:
        return []
    tx = state_of(conn).tx
    tx.set_pgresult(result)
    return tx.load_rows(0, min(result.ntuples, limit), tuple)
