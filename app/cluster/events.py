"""Cluster events: every transition of a node or of the writer, kept in a bounded history."""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

logger = logging.getLogger("app.cluster")


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
