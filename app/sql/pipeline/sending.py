"""Sending a pipeline's commands: parameters dumped by psycopg's Transformer, a text prepared
by name on a connection the second time it runs there, the rest sent unnamed.

A connection keeps MAX_PREPARED names at most, shared by every key that gets it. When they are
all taken, the oldest gives its place to the new one: it is dropped from the map at once (no
later command uses it) and deallocated on the server after a run, RETIRE_BATCH at a time (a
command of the run that sent it before may still be using it). A text whose name went is
prepared again the next time it runs (its uses are still counted), so one key's many texts
cost another key's statement one Parse at most, never its name for the connection's life.
(Oldest, not least recently used: a hit stays a dictionary lookup, with nothing to write.)"""

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
# ... and the characters of those texts at most, and the longest text prepared or counted (a
# key's 100,000-character texts would otherwise keep 100 MB per connection in `seen`).
MAX_SEEN_CHARS = 1 << 20
PREPARED_LENGTH = 16384
# Names given up wait for a DEALLOCATE (one round trip for them all) until there are this many.
RETIRE_BATCH = 16
_names = itertools.count()


@dataclass(slots=True)
class ConnState:
    """What a connection carries for pipelines: a transformer and its prepared names."""

    # Built from the connection's adapters, not the connection: the state must not keep
    # its connection alive (the WeakKeyDictionary below would never let go of it).
    tx: abc.Transformer
    # In the order they were prepared: the first is the oldest.
    prepared: dict[Key, bytes] = field(default_factory=dict)
    seen: dict[Key, int] = field(default_factory=dict)
    seen_chars: int = 0
    # Names dropped from `prepared` that the server still has, to DEALLOCATE after a run.
    retired: list[bytes] = field(default_factory=list)


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
        state.seen_chars = 0
        state.retired.clear()


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
    if name is None and command.prepare and _second_use(state, naming, key):
        name = naming[key] = f"_mp_{next(_names)}".encode()
        prepares = True
        pgconn.send_prepare(name, command.sql.encode(), types)
    if name is None:
        pgconn.send_query_params(command.sql.encode(), params, types, formats)
    else:
        pgconn.send_query_prepared(name, params, formats)
    return Slot(key, name, prepares, command.keep, unit)


def _second_use(state: ConnState, naming: dict[Key, bytes], key: Key) -> bool:
    if len(key[0]) > PREPARED_LENGTH:
        return False
    uses = state.seen.get(key, 0) + 1
    if uses == 1:
        if len(state.seen) >= MAX_SEEN or state.seen_chars + len(key[0]) > MAX_SEEN_CHARS:
            state.seen.clear()
            state.seen_chars = 0
        state.seen_chars += len(key[0])
    state.seen[key] = uses
    if uses < 2:
        return False
    # (names prepared by this run count too: they join `prepared` as their replies come)
    prepared = state.prepared
    while len(prepared) + len(naming) >= MAX_PREPARED:
        if not prepared:  # every name is this run's own
            return False
        oldest = next(iter(prepared))
        state.retired.append(prepared.pop(oldest))
    return True


def deallocations(state: ConnState) -> str | None:
    """The DEALLOCATE of the names given up, once there are RETIRE_BATCH of them (and they are
    then forgotten), or None."""
    if len(state.retired) < RETIRE_BATCH:
        return None
    names, state.retired = state.retired, []
    return "; ".join(f"DEALLOCATE {name.decode()}" for name in names)
