"""The cluster: every node, who the writer is, and how healthy the whole is."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout, TooManyRequests

from app.cluster.backends import Backends
from app.cluster.events import EventKind, EventLog
from app.cluster.failover import elect, find_aliases, newest_timeline
from app.cluster.monitor import HealthMonitor
from app.cluster.node import ConnectionCallback, Node, NodeState, Role
from app.dsn import dsn_secrets
from app.errors import (
    Conflict,
    NodeFailed,
    NoReaderError,
    NotFound,
    NoWriterError,
    PoolExhausted,
    SettingsError,
)
from app.redaction import redactor
from app.settings import Settings

logger = logging.getLogger(__name__)


Intent = Literal["read", "write"]


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

    def __init__(
        self,
        settings: Settings,
        *,
        session_options: str = "",
        configure: ConnectionCallback | None = None,
    ) -> None:
        if settings.primary_dsn is None:
            raise SettingsError(
                "MIRRORPOOL_PRIMARY_DSN is not set: point it at your primary "
                "(or run `mirrorpool dev` for a local primary and mirror)"
            )
        dsns = [settings.primary_dsn.get_secret_value(), *settings.mirror_dsns]
        for dsn in dsns:
            redactor.add(*dsn_secrets(dsn))
        redactor.add(*(secret.get_secret_value() for secret in settings.role_passwords.values()))
        self.nodes = [
            Node(name, dsn, settings, session_options=session_options, configure=configure)
            for name, dsn in zip(node_names(len(dsns) - 1), dsns, strict=True)
        ]
        self.events = EventLog()
        # What is allowed but unsafe, found at start-up (app/cluster/logins.py): on /health.
        self.warnings: list[str] = []
        self.writer: Node | None = None
        self.fenced: dict[str, str] = {}
        # Nodes that lead to the same server as another node (app/cluster/failover.py), by
        # name, with the name of the node that stands for that server.
        self.aliases: dict[str, str] = {}
        self.newest_timeline = 0
        self._tie_reported = False
        self._writer_found = asyncio.Event()
        self.monitor = HealthMonitor(
            self.nodes,
            interval=settings.health_interval,
            timeout=settings.health_timeout,
            threshold=settings.health_threshold,
            on_change=self._node_changed,
        )
        # Backends of given-up connections, ended and waited for (app/cluster/backends.py).
        self.backends = Backends(self.monitor)
        self._background: set[asyncio.Task[Any]] = set()
        # Called with a node the moment it is found down or fenced, to fail its in-flight
        # requests at once instead of at their deadlines (app/sql/engine.py).
        self.on_node_lost: list[Callable[[Node], None]] = []
        self.read_from_mirror = settings.read_from_mirror
        self.max_replica_lag_ms = settings.max_replica_lag_ms
        self.promote_after_s = settings.promote_after_s
        self._writer_lost_at: float | None = None

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
        await self.backends.close()
        await self.monitor.stop()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*(node.close(timeout) for node in self.nodes))

    def pick(self, intent: Intent, avoid: Collection[str] = ()) -> Node:
        """The node that serves a request of this intent, or a ClusterError saying why none.

        Reads go to the writer when there is one, else to the first reachable mirror;
        `avoid` names nodes that just failed this request.
        """
        if intent == "write":
            if self.writer is None or self.writer.name in avoid:
                raise NoWriterError("no writable node is reachable; retry shortly")
            return self.writer
        readers = [n for n in self.readers() if n.name not in avoid]
        if not readers:
            raise NoReaderError("no node is reachable for reads; retry shortly")
        if self.read_from_mirror:
            fresh = [n for n in readers if n is not self.writer and self._fresh(n)]
            if fresh:
                # Spread reads over the fresh mirrors, the least loaded pool first.
                return min(fresh, key=lambda n: n.pool.get_stats().get("requests_waiting", 0))
        return readers[0]

    def _fresh(self, node: Node) -> bool:
        lag = node.state.replay_lag_s
        return lag is not None and lag * 1000 <= self.max_replica_lag_ms

    async def getconn(
        self, node: Node, timeout: float | None, role: str | None = None
    ) -> AsyncConnection[Any]:
        """A connection from the node's pool for `role` (the service's own login for None;
        give it back to the same pool)."""
        pool = node.pool if role is None else await node.pool_for(role)
        try:
            return await pool.getconn(timeout)
        except TooManyRequests:
            raise PoolExhausted(
                f"too many requests are waiting for a connection to {node.name}"
            ) from None
        except PoolTimeout:
            raise PoolExhausted(f"no connection to {node.name} became free in time") from None

    def readers(self) -> list[Node]:
        """Reachable unfenced nodes that can serve reads: the writer first, then mirrors;
        a node whose last probe failed goes last until it is confirmed up or down. An alias
        is not one: its server already serves through the node it is an alias of."""
        mirrors = [
            n
            for n in self.nodes
            if n.role is Role.MIRROR and n.name not in self.fenced and n.name not in self.aliases
        ]
        nodes = ([self.writer] if self.writer else []) + mirrors
        return sorted(nodes, key=lambda n: n.state.consecutive_failures > 0)

    def health(self) -> Health:
        """ok: a writer and every node up; degraded: something serves; down: nothing does."""
        reasons = [
            f"{n.name} unreachable: {n.state.error or 'not checked yet'}"
            for n in self.nodes
            if not n.state.reachable
        ]
        reasons += [f"{name} fenced: {why}" for name, why in self.fenced.items()]
        reasons += [
            f"{name} leads to the same server as {lead}: no second server behind it"
            for name, lead in self.aliases.items()
        ]
        if self.writer is None:
            reasons.insert(0, "no writable node")
        if not self.readers():
            return Health(HealthStatus.DOWN, reasons)
        return Health(HealthStatus.DEGRADED if reasons else HealthStatus.OK, reasons)

    def _node_changed(self, node: Node, was: NodeState) -> None:
        state = node.state
        moved = bool(state.reachable and was.server is not None and state.server != was.server)
        if moved:
            self.events.record(
                EventKind.SERVER_CHANGED,
                node.name,
                f"now reaches {state.server} (was {was.server}); pool connections replaced",
            )
        if moved or (state.reachable and was.reachable is False):
            self._spawn(self._refill(node, drain=moved))
        if state.reachable and was.reachable is not True:
            # The first sighting of a healthy node is news, not an alarm.
            level = logging.INFO if was.reachable is None else logging.WARNING
            self.events.record(
                EventKind.NODE_UP, node.name, f"reachable at {node.target} as {node.role}", level
            )
        elif not state.reachable:
            self.events.record(
                EventKind.NODE_DOWN,
                node.name,
                f"unreachable at {node.target}: {state.error}; retrying in the background",
            )
            self._lost(node)
        elif state.in_recovery != was.in_recovery:
            self.events.record(EventKind.ROLE_CHANGED, node.name, f"now {node.role}")
        self._elect_writer()

    def _elect_writer(self) -> None:
        self.newest_timeline = newest_timeline(self.nodes, self.newest_timeline)
        self._unfence_rejoined()
        aliases = find_aliases(self.nodes)
        self._note_aliases({name: lead.name for name, lead in aliases.items()})
        election = elect(self.nodes, set(self.fenced), self.newest_timeline, aliases)
        for node in election.fence:
            reason = (
                f"accepts writes on timeline {node.state.timeline}, older than "
                f"{self.newest_timeline}: no traffic until an operator clears it"
            )
            self.fenced[node.name] = reason
            self.events.record(EventKind.FENCED, node.name, reason)
            self._lost(node)
        tied = {n.name for n in election.tied}
        if tied and not self._tie_reported:
            names = ", ".join(n.name for n in election.tied)
            self.events.record(
                EventKind.SPLIT_BRAIN,
                None,
                f"{names} all accept writes on timeline {election.tied[0].state.timeline} "
                "on different servers: writes stop until only one does",
            )
            for node in election.tied:
                self.monitor.probe_soon(node)
        self._tie_reported = bool(tied)
        # A connection the monitor keeps may reach a server its DSN no longer leads to: a
        # Service re-routes new connections only. Tied nodes and aliases are probed on new
        # connections, so a tie or an alias that only old connections made goes away.
        self.monitor.fresh = set(self.aliases) | tied
        writer = election.writer
        # While nobody accepts writes, the candidates are probed quickly (monitor.hunt).
        self.monitor.hunt(writer is None)
        if writer is not None:
            self._writer_found.set()
            self._writer_lost_at = None
        else:
            self._writer_found.clear()
            if self._writer_lost_at is None and self.promote_after_s is not None:
                self._writer_lost_at = time.monotonic()
                loop = asyncio.get_running_loop()
                loop.call_later(self.promote_after_s, self._maybe_promote)
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

    async def _refill(self, node: Node, drain: bool) -> None:
        # The node's DSN leads to another server now (a Service re-routed; or the server
        # restarted): connections made before may reach the old one, so all are replaced.
        if drain:
            await node.drain()
        # Throws out connections that died with an outage, and opens one now if the pool
        # gave up reconnecting on its own (POOL_RECONNECT_S).
        await node.check()

    def _note_aliases(self, aliases: dict[str, str]) -> None:
        for name, lead in aliases.items():
            if self.aliases.get(name) != lead:
                node = self.node(lead)
                server = node.state.server if node else None
                self.events.record(
                    EventKind.ALIAS,
                    name,
                    f"leads to the same server as {lead} ({server}): one server, not a "
                    f"second writer; its traffic goes through {lead}",
                )
        for name, lead in self.aliases.items():
            if aliases.get(name) != lead:
                node = self.node(name)
                now = (
                    f"reaches {node.state.server}"
                    if node is not None and node.state.reachable
                    else "unreachable"
                )
                self.events.record(
                    EventKind.UNALIASED, name, f"no longer an alias of {lead}: {now}"
                )
        self.aliases = aliases

    def _unfence_rejoined(self) -> None:
        # A fenced node that now follows the newest timeline as a mirror is safe again.
        for name in list(self.fenced):
            node = self.node(name)
            if (
                node is not None
                and node.role is Role.MIRROR
                and (node.state.timeline or 0) >= self.newest_timeline
            ):
                del self.fenced[name]
                self.events.record(EventKind.UNFENCED, name, "rejoined as a mirror")

    async def wait_for_writer(self, timeout: float) -> Node | None:
        """The writer, once the monitor has found one, or None after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._writer_found.wait()
        except TimeoutError:
            return None
        return self.writer

    def unfence(self, name: str, by: str = "an operator") -> bool:
        """Clear a fence (an operator's decision); False when the node was not fenced."""
        if self.fenced.pop(name, None) is None:
            return False
        self.events.record(EventKind.UNFENCED, name, f"cleared by {by}")
        self._elect_writer()
        return True

    def _lost(self, node: Node) -> None:
        for listener in self.on_node_lost:
            listener(node)
        # Requests still waiting for its connections are failed as its in-flight ones are.
        self._spawn(node.lose(lambda: NodeFailed(f"{node.name} was lost", node=node.name)))

    def _maybe_promote(self) -> None:
        # MIRRORPOOL_PROMOTE_AFTER_S: for a single instance with no HA manager only; with
        # several instances or a manager of its own this could make two primaries.
        if self.promote_after_s is None or self._writer_lost_at is None:
            return
        waited = time.monotonic() - self._writer_lost_at
        if waited < self.promote_after_s:
            # The timer may fire a hair early on another clock: look again when it is time.
            asyncio.get_running_loop().call_later(
                self.promote_after_s - waited + 0.01, self._maybe_promote
            )
            return
        if any(n.state.reachable and n.role is Role.PRIMARY for n in self.nodes):
            return  # a writer exists but is fenced or tied: not a lost primary
        mirrors = [
            n
            for n in self.nodes
            if n.role is Role.MIRROR and n.name not in self.fenced and n.name not in self.aliases
        ]
        if not mirrors:
            return
        best = min(
            mirrors, key=lambda n: (n.state.replay_lag_bytes or 0, n.state.replay_lag_s or 0)
        )
        self._writer_lost_at = None  # one attempt per outage
        reason = f"no writer for {self.promote_after_s:g} s (MIRRORPOOL_PROMOTE_AFTER_S)"
        self._spawn(self.promote(best.name, reason))

    async def promote(self, name: str, reason: str) -> Node:
        """Promote a mirror (pg_promote) and wait until the monitor sees it accept writes."""
        node = self.node(name)
        if node is None:
            raise NotFound(f"no node named {name!r}")
        if node.role is not Role.MIRROR:
            raise Conflict(f"{name} is not a reachable mirror (it is {node.role})")
        if name in self.fenced:
            raise Conflict(f"{name} is fenced: {self.fenced[name]}")
        conn = await AsyncConnection.connect(
            node.dsn, autocommit=True, application_name="mirrorpool-promote"
        )
        try:
            await conn.execute("SELECT pg_promote(true, 30)")
        finally:
            await conn.close()
        self.events.record(EventKind.PROMOTED, name, reason)
        self.monitor.probe_soon(node)
        await self.wait_for_writer(10)
        return node

    def report_failure(self, node: Node) -> None:
        """A request failed on `node` in a way that may mean the node did: probe it now."""
        self.monitor.probe_soon(node)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
