"""The cluster: every node, who the writer is, and how healthy the whole is.

The decisions are failover's (app/cluster/failover.py: pure functions over what the monitor
saw); the cluster gathers the facts, applies what was decided (events, fences, the promotion
timer) and routes by it (app/cluster/routing.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from psycopg import AsyncConnection

from app.cluster import failover
from app.cluster.backends import Backends
from app.cluster.events import EventKind, EventLog, Signal
from app.cluster.failover import Decision, NodeFacts, Standing
from app.cluster.monitor import HealthMonitor
from app.cluster.node import ConnectionCallback, Node, NodeState
from app.cluster.routing import Intent, Routing
from app.dsn import dsn_secrets
from app.errors import Conflict, NodeFailed, NotFound, SettingsError
from app.redaction import redactor
from app.settings import Settings
from app.supervisor import Supervisor

logger = logging.getLogger(__name__)

__all__ = ["Cluster", "Health", "HealthStatus", "Intent", "node_names"]


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
    """The configured nodes, their pools and the health monitor that watches them; every
    task and timer of theirs runs under `supervisor` (the lifespan's)."""

    def __init__(
        self,
        settings: Settings,
        *,
        supervisor: Supervisor,
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
            Node(
                name,
                dsn,
                settings,
                session_options=session_options,
                configure=configure,
                supervisor=supervisor,
            )
            for name, dsn in zip(node_names(len(dsns) - 1), dsns, strict=True)
        ]
        self._by_name = {n.name: n for n in self.nodes}
        self.supervisor = supervisor
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
            supervisor=supervisor,
            interval=settings.health_interval,
            timeout=settings.health_timeout,
            threshold=settings.health_threshold,
            on_change=self._node_changed,
        )
        # Backends of given-up connections, ended and waited for (app/cluster/backends.py).
        self.backends = Backends(self.monitor, supervisor)
        self._background: set[asyncio.Task[Any]] = set()
        # Sent a node the moment it is found down or fenced, so that its in-flight requests
        # fail at once instead of at their deadlines (the engine listens).
        self.node_lost: Signal[Node] = Signal()
        self.routing = Routing(
            self.nodes,
            read_from_mirror=settings.read_from_mirror,
            max_replica_lag_ms=settings.max_replica_lag_ms,
        )
        self.promote_after_s = settings.promote_after_s
        # The promote-after timer (MIRRORPOOL_PROMOTE_AFTER_S), while no writer is seen.
        self._writer_lost_at: float | None = None
        self._promote_timer: asyncio.TimerHandle | None = None

    def node(self, name: str) -> Node | None:
        """A node by name."""
        return self._by_name.get(name)

    async def open(self) -> None:
        """Open every pool (without waiting for connections) and start the monitor."""
        for node in self.nodes:
            await node.open()
        self.monitor.start()

    async def close(self, timeout: float) -> None:
        """Stop the monitor, the promotion timer and the cluster's tasks, and close every
        pool, each given `timeout` seconds."""
        await self.backends.close()
        await self.monitor.stop()
        self._stop_promotion()
        for task in self._background:
            task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=timeout)
        await asyncio.gather(*(node.close(timeout) for node in self.nodes))

    def pick(self, intent: Intent, avoid: Collection[str] = ()) -> Node:
        """The node that serves a request of this intent, or a ClusterError saying why none
        (app/cluster/routing.py); `avoid` names nodes that just failed this request."""
        return self.routing.pick(intent, self.writer, self.fenced, self.aliases, avoid)

    def readers(self) -> list[Node]:
        """Reachable unfenced nodes that can serve reads, the writer first
        (app/cluster/routing.py)."""
        return self.routing.readers(self.writer, self.fenced, self.aliases)

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
            self._spawn(self._refill(node, drain=moved), f"refill-{node.name}")
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
        """Decide (app/cluster/failover.py) on what the monitor saw, and apply it."""
        standing = Standing(
            fenced=frozenset(self.fenced),
            newest_timeline=self.newest_timeline,
            tie_reported=self._tie_reported,
            promotion_timer=self._writer_lost_at is not None,
        )
        self._apply(failover.decide(self._facts(), standing, self.promote_after_s))

    def _facts(self) -> list[NodeFacts]:
        return [NodeFacts.seen(n.name, n.state) for n in self.nodes]

    def _apply(self, decision: Decision) -> None:
        self.newest_timeline = decision.newest_timeline
        for name in decision.unfence:
            del self.fenced[name]
            self.events.record(EventKind.UNFENCED, name, "rejoined as a mirror")
        self._note_aliases(decision.aliases)
        for name, reason in decision.fence.items():
            self.fenced[name] = reason
            self.events.record(EventKind.FENCED, name, reason)
            self._lost(self._by_name[name])
        tied = [self._by_name[name] for name in decision.tied]
        if decision.report_tie:
            self.events.record(
                EventKind.SPLIT_BRAIN,
                None,
                f"{', '.join(decision.tied)} all accept writes on timeline "
                f"{tied[0].state.timeline} on different servers: writes stop until only one does",
            )
            for node in tied:
                self.monitor.probe_soon(node)
        self._tie_reported = bool(tied)
        # A connection the monitor keeps may reach a server its DSN no longer leads to: a
        # Service re-routes new connections only.
        self.monitor.fresh = set(decision.probe_fresh)
        # While nobody accepts writes, the candidates are probed quickly (monitor.hunt).
        self.monitor.hunt(decision.hunt)
        if decision.stop_promotion:
            self._stop_promotion()
        if decision.promote_in_s is not None:
            self._writer_lost_at = time.monotonic()
            self._promote_timer = self.supervisor.call_later(
                decision.promote_in_s, self._maybe_promote
            )
        writer = None if decision.writer is None else self._by_name[decision.writer]
        if writer is not None:
            self._writer_found.set()
        else:
            self._writer_found.clear()
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
        self.node_lost.send(node)
        # Requests still waiting for its connections are failed as its in-flight ones are.
        self._spawn(
            node.lose(lambda: NodeFailed(f"{node.name} was lost", node=node.name)),
            f"lose-{node.name}",
        )

    def _maybe_promote(self) -> None:
        # MIRRORPOOL_PROMOTE_AFTER_S: for a single instance with no HA manager only; with
        # several instances or a manager of its own this could make two primaries.
        self._promote_timer = None
        if self.promote_after_s is None or self._writer_lost_at is None:
            return
        choice = failover.promotion(
            self._facts(),
            self.fenced,
            self.aliases,
            time.monotonic() - self._writer_lost_at,
            self.promote_after_s,
        )
        if choice.wait_s is not None:
            self._promote_timer = self.supervisor.call_later(choice.wait_s, self._maybe_promote)
        if choice.node is None:
            return
        self._writer_lost_at = None  # one attempt per outage
        reason = f"no writer for {self.promote_after_s:g} s (MIRRORPOOL_PROMOTE_AFTER_S)"
        self._spawn(self.promote(choice.node, reason), f"promote-{choice.node}")

    def _stop_promotion(self) -> None:
        self._writer_lost_at = None
        self.supervisor.cancel_timer(self._promote_timer)
        self._promote_timer = None

    async def promote(self, name: str, reason: str) -> Node:
        """Promote a mirror (pg_promote) and wait until the monitor sees it accept writes."""
        node = self.node(name)
        if node is None:
            raise NotFound(f"no node named {name!r}")
        refused = failover.refuse_promotion(NodeFacts.seen(name, node.state), self.fenced)
        if refused is not None:
            raise Conflict(refused)
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

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        task = self.supervisor.spawn(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
