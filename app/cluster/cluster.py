"""The cluster: every node, who the writer is, and how healthy the whole is."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.cluster.dsn import dsn_secrets
from app.cluster.events import EventKind, EventLog
from app.cluster.monitor import HealthMonitor
from app.cluster.node import Node, Role
from app.errors import SettingsError
from app.redaction import redactor
from app.settings import Settings

logger = logging.getLogger(__name__)


class HealthStatus(StrEnum):
    """The summary /health reports."""

    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(frozen=True)
class Health:
    """The cluster's health and the reasons it is not fully ok."""

    status: HealthStatus
    reasons: list[str]


def node_names(mirror_count: int) -> list[str]:
    """Names of the configured nodes: primary, then mirror (or mirror1, mirror2, ...)."""
    if mirror_count == 1:
        return ["primary", "mirror"]
    return ["primary"] + [f"mirror{i + 1}" for i in range(mirror_count)]


class Cluster:
    """The configured nodes, their pools and the health monitor that watches them."""

    def __init__(self, settings: Settings) -> None:
        if settings.primary_dsn is None:
            raise SettingsError(
                "MIRRORPOOL_PRIMARY_DSN is not set: point it at your primary "
                "(or run `mirrorpool dev` for a local primary and mirror)"
            )
        dsns = [settings.primary_dsn.get_secret_value(), *settings.mirror_dsns]
        for dsn in dsns:
            redactor.add(*dsn_secrets(dsn))
        self.nodes = [
            Node(name, dsn, settings)
            for name, dsn in zip(node_names(len(dsns) - 1), dsns, strict=True)
        ]
        self.events = EventLog()
        self.writer: Node | None = None
        self.monitor = HealthMonitor(
            self.nodes,
            interval=settings.health_interval,
            timeout=settings.health_timeout,
            threshold=settings.health_threshold,
            on_change=self._node_changed,
        )
        self._background: set[asyncio.Task[Any]] = set()

    def node(self, name: str) -> Node | None:
        """A node by name."""
        return next((n for n in self.nodes if n.name == name), None)

    async def open(self) -> None:
        """Open every pool (without waiting for connections) and start the monitor."""
        for node in self.nodes:
            await node.open()
        self.monitor.start()

    async def close(self, timeout: float) -> None:
        """Stop the monitor and close every pool, each given `timeout` seconds."""
        await self.monitor.stop()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*(node.close(timeout) for node in self.nodes))

    def readers(self) -> list[Node]:
        """Reachable nodes that can serve reads: the writer first, then mirrors."""
        mirrors = [n for n in self.nodes if n.role is Role.MIRROR]
        return ([self.writer] if self.writer else []) + mirrors

    def health(self) -> Health:
        """ok: a writer and every node up; degraded: something serves; down: nothing does."""
        reasons = [
            f"{n.name} unreachable: {n.state.error or 'not checked yet'}"
            for n in self.nodes
            if not n.state.reachable
        ]
        if self.writer is None:
            reasons.insert(0, "no writable node")
        if not self.readers():
            return Health(HealthStatus.DOWN, reasons)
        return Health(HealthStatus.DEGRADED if reasons else HealthStatus.OK, reasons)

    def _node_changed(self, node: Node, was_reachable: bool | None) -> None:
        state = node.state
        if state.reachable and was_reachable is not True:
            # The first sighting of a healthy node is news, not an alarm.
            level = logging.INFO if was_reachable is None else logging.WARNING
            self.events.record(
                EventKind.NODE_UP, node.name, f"reachable at {node.target} as {node.role}", level
            )
            if was_reachable is False:
                # Connections the pool holds from before the outage are useless now.
                self._spawn(node.pool.check())
        elif not state.reachable:
            self.events.record(
                EventKind.NODE_DOWN,
                node.name,
                f"unreachable at {node.target}: {state.error}; retrying in the background",
            )
        else:
            self.events.record(EventKind.ROLE_CHANGED, node.name, f"now {node.role}")
        self._elect_writer()

    def _elect_writer(self) -> None:
        candidates = [n for n in self.nodes if n.role is Role.PRIMARY]
        if len(candidates) > 1:
            # Two nodes accept writes: the newer timeline wins; a tie is undecidable.
            candidates.sort(key=lambda n: n.state.timeline or 0, reverse=True)
            if candidates[0].state.timeline == candidates[1].state.timeline:
                candidates = []
        writer = candidates[0] if candidates else None
        if writer is self.writer:
            return
        previous, self.writer = self.writer, writer
        if writer is not None:
            was = f" (was {previous.name})" if previous else ""
            first = self.events.counts[EventKind.WRITER_CHANGED] == 0
            level = logging.INFO if first else logging.WARNING
            self.events.record(EventKind.WRITER_CHANGED, writer.name, f"now the writer{was}", level)
        else:
            assert previous is not None
            self.events.record(
                EventKind.WRITER_LOST, previous.name, "no reachable node accepts writes"
            )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
