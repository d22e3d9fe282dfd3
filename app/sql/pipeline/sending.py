"""Sending a pipeline's commands: parameters dumped by psycopg's Transformer, a text prepared
by name on a connection the second time it runs there, the rest sent unnamed."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from psycopg import AsyncConnection, abc
from psycopg.adapt import PyFormat, Transformer
from psycopg.pq.abc import PGconn

from app.sql.pipeline.commands import Command, Key
from app.sql.pipeline.reading import Slot

# Statements prepared by name per connection at most; the rest run unnamed.
MAX_PREPARED = 256
# Texts whose uses are counted per connection at most (to prepare on the second use).
MAX_SEEN = 1024
_names = itertools.count()


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


def dump(state: ConnState, unit: Sequence[Command]) -> list[Any] | tuple[int, psycopg.Error]:
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


def send(
    pgconn: PGconn,
    state: ConnState,
    naming: dict[Key, bytes],
    command: Command,
    dumped: Any,
    unit: int,
) -> Slot:
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
    return Slot(key, name, prepares, command.keep, unit)


def _second_use(state: ConnState, key: Key) -> bool:
    if len(state.prepared) >= MAX_PREPARED:
        return False
    uses = state.seen.get(key, 0) + 1
    if uses == 1 and len(state.seen) >= MAX_SEEN:
        state.seen.clear()
    state.seen[key] = uses
    return uses >= 2
