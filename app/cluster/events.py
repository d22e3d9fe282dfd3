"""Cluster events: every transition of a node or of the writer, kept in a bounded history,
and the signal that tells whoever listens (the engine) that a node was lost."""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Generic, TypeVar

logger = logging.getLogger("app.cluster")

T = TypeVar("T")


class EventKind(StrEnum):
    """The kinds of transition mirrorpool reports."""

    NODE_UP = "node_up"
    NODE_DOWN = "node_down"
    ROLE_CHANGED = "role_changed"
    WRITER_CHANGED = "writer_changed"
    WRITER_LOST = "writer_lost"
    FENCED = "fenced"
    UNFENCED = "unfenced"
    SPLIT_BRAIN = "split_brain"
    PROMOTED = "promoted"
    ALIAS = "alias"
    UNALIASED = "unaliased"
    SERVER_CHANGED = "server_changed"


@dataclass(frozen=True)
class Event:
    """One transition: when, what, which node, and why."""

    kind: EventKind
    node: str | None
    reason: str
    time: datetime = field(default_factory=lambda: datetime.now(UTC))


class EventLog:
    """The latest events (at most `size`) and a count of every kind since start."""

    def __init__(self, size: int = 200) -> None:
        self._events: deque[Event] = deque(maxlen=size)
        self.counts: Counter[EventKind] = Counter()

    def record(
        self, kind: EventKind, node: str | None, reason: str, level: int = logging.WARNING
    ) -> Event:
        """Remember an event, count it and log it (at WARNING unless told otherwise)."""
        event = Event(kind, node, reason)
        self._events.append(event)
        self.counts[kind] += 1
        logger.log(level, "%s%s: %s", kind.value, f" {node}" if node else "", reason)
        return event

    def recent(self) -> list[Event]:
        """The remembered events, oldest first."""
        return list(self._events)


class Signal(Generic[T]):
    """Listeners called in turn with every value sent: how the cluster says that a node was
    lost (found down, or fenced) without knowing who acts on it."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[T], None]] = []

    def connect(self, listener: Callable[[T], None]) -> None:
        """Call `listener` with every value sent from now on."""
        self._listeners.append(listener)

    def send(self, value: T) -> None:
        """Call every listener with `value`, in the order they connected."""
        for listener in self._listeners:
            listener(value)
