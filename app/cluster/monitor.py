"""The health monitor: probes every node on its own connection, under a hard deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg

from app.cluster.failover import counts_down
from app.cluster.node import Node, NodeState, Role, ServerIdentity
from app.redaction import redactor
from app.supervisor import Supervisor

logger = logging.getLogger(__name__)

# One round trip that works on a primary and on a standby. The primary's timeline comes
# from its current WAL file name (pg_control_checkpoint() lags until the first checkpoint
# after a promotion); a standby's from its WAL receiver, else its last restartpoint. The
# last four columns say which server answered (ServerIdentity), so that two nodes whose
# DSNs lead to the same server are recognised as one. Its start time travels as an integer
# of microseconds: a timestamptz's text follows the session's DateStyle and TimeZone,
# which a database or role setting may make unreadable.
PROBE_SQL = """
SELECT r.rec,
       CASE WHEN r.rec
            THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                          (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END,
       CASE WHEN r.rec THEN
            CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()
                 THEN 0
                 ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())
            END
       END::float8,
       CASE WHEN r.rec
            THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
       END::int8,
       (SELECT system_identifier FROM pg_control_system()),
       (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::int8,
       host(inet_server_addr()),
       inet_server_port()
FROM (SELECT pg_is_in_recovery() AS rec) AS r
"""

# How soon a node that failed a probe, or a request, is probed again.
RECHECK_S = 0.05
# While no node accepts writes, every node that could become the writer (a mirror, or a node
# not reachable now) is probed this often, the pause growing by HUNT_GROWTH per probe up to
# HUNT_MAX_S: a promotion (by Patroni, an operator, ...) is then followed within HUNT_MAX_S
# plus one round trip, not within a health interval, at a bounded cost of 10-20 probes per
# second and node, only while there is no writer.
HUNT_FIRST_S = 0.05
HUNT_GROWTH = 1.1
HUNT_MAX_S = 0.1

# Called with the node and a copy of its state from before the change.
Listener = Callable[[Node, NodeState], None]


class ProbeTimeout(Exception):
    """The node did not answer the probe within the probe timeout."""


class HealthMonitor:
    """Probes each node every `interval` seconds and after every `probe_soon()`.

    Each node has one dedicated connection, never a pool connection, so a busy pool is
    never mistaken for a dead node. A probe that overruns `timeout` is abandoned rather
    than awaited: a frozen server would otherwise hold the monitor as long as it likes.
    The connection is kept while it works, except for the nodes named in `fresh`, which
    are probed on a new connection every time (see Cluster). While the cluster has no
    writer (hunt()), the candidates are probed every 50-100 ms instead of every interval.
    Its loops and queries run under the service's `supervisor`; when a failing node counts
    as down is failover's rule (app/cluster/failover.py counts_down).
    """

    def __init__(
        self,
        nodes: list[Node],
        *,
        supervisor: Supervisor,
        interval: float,
        timeout: float,
        threshold: int,
        on_change: Listener,
    ) -> None:
        self.nodes = nodes
        self._supervisor = supervisor
        self.interval = interval
        self.timeout = timeout
        self.threshold = threshold
        self._on_change = on_change
        self._conns: dict[str, psycopg.AsyncConnection[Any] | None] = {}
        self._wake: dict[str, asyncio.Event] = {n.name: asyncio.Event() for n in nodes}
        self._loops: list[asyncio.Task[None]] = []
        self._abandoned: set[asyncio.Task[Any]] = set()
        # Nodes whose kept connection may reach a server their DSN no longer leads to
        # (a Service or proxy re-routes new connections only): probe them on new ones.
        self.fresh: set[str] = set()
        # True while no node accepts writes (see hunt()); probes made since, per node.
        self.hunting = False
        self._hunted: dict[str, int] = {}

    def start(self) -> None:
        """Start one probing loop per node."""
        self._loops = [
            self._supervisor.spawn(self._run(node), name=f"monitor-{node.name}")
            for node in self.nodes
        ]

    async def stop(self) -> None:
        """Stop probing and close the probe connections."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        for task in self._abandoned:
            task.cancel()
        for name, conn in list(self._conns.items()):
            if conn is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await conn.close()
            self._conns[name] = None

    def probe_soon(self, node: Node) -> None:
        """Probe `node` now instead of at its next interval."""
        self._wake[node.name].set()

    def hunt(self, on: bool) -> None:
        """While `on` (no node accepts writes), probe every candidate for writer quickly,
        starting now, so that a promotion is seen within HUNT_MAX_S."""
        if on and not self.hunting:
            self._hunted = {}
            for node in self.nodes:
                if self._candidate(node):
                    self.probe_soon(node)
        self.hunting = on

    @staticmethod
    def _candidate(node: Node) -> bool:
        # A writable node that is no writer is fenced or tied: it stays so on its own.
        return node.role is not Role.PRIMARY

    def _pause(self, node: Node) -> float:
        """Seconds until the next probe of `node`."""
        pause = self.interval
        failures = node.state.consecutive_failures
        if failures and not counts_down(failures, self.threshold):
            # A node failing but not yet declared down is probed again quickly, so that a
            # crash reported by a request is confirmed in milliseconds, not intervals.
            pause = min(pause, RECHECK_S)
        if self.hunting and self._candidate(node):
            done = self._hunted.get(node.name, 0)
            self._hunted[node.name] = done + 1
            pause = min(pause, HUNT_FIRST_S * HUNT_GROWTH**done, HUNT_MAX_S)
        return pause

    async def _run(self, node: Node) -> None:
        wake = self._wake[node.name]
        while True:
            await self.probe(node)
            pause = self._pause(node)
            # (asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancel that
            # comes as the wake is set, and the monitor would never stop)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await wake.wait()
            wake.clear()

    async def probe(self, node: Node) -> None:
        """Probe one node once and record what was seen."""
        started = time.monotonic()
        task = self._supervisor.spawn(
            self._query(node), name=f"probe-{node.name}", log_failure=False
        )
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout)
        except asyncio.CancelledError:
            # stop(): the query must not outlive the monitor (nor leave its error unread).
            self._abandon(node, task)
            raise
        try:
            if not done:
                self._abandon(node, task)
                raise ProbeTimeout(f"no answer within {self.timeout:g} s")
            row = task.result()
        except (psycopg.Error, OSError, ProbeTimeout) as exc:
            self._record_failure(node, exc)
            return
        self._record_success(node, row, (time.monotonic() - started) * 1000)

    async def _query(self, node: Node) -> tuple[Any, ...]:
        conn = self._conns.get(node.name)
        try:
            if conn is not None and node.name in self.fresh:
                self._conns[node.name] = None
                await conn.close()
                conn = None
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    node.dsn, autocommit=True, application_name="mirrorpool-monitor"
                )
                await self._keep(node, conn)
            cur = await conn.execute(PROBE_SQL, prepare=False)
            row = await cur.fetchone()
        except BaseException:
            # Failed, or abandoned by probe(): this connection is in an unknown state.
            if self._conns.get(node.name) is conn:
                self._conns[node.name] = None
            if conn is not None:
                await conn.close()
            raise
        assert row is not None
        return tuple(row)

    async def ask(self, node: Node, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one query on the node's monitor connection (opened if there is none) within
        the probe timeout, abandoned like a probe past it: how app/cluster/backends.py reads
        pg_stat_activity and terminates backends without taking a pool connection."""
        task = self._supervisor.spawn(
            self._ask(node, query, params), name=f"ask-{node.name}", log_failure=False
        )
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout)
        except asyncio.CancelledError:
            self._abandon(node, task)
            raise
        if not done:
            self._abandon(node, task)
            raise ProbeTimeout(f"no answer within {self.timeout:g} s")
        return task.result()

    async def _ask(self, node: Node, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        conn = self._conns.get(node.name)
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    node.dsn, autocommit=True, application_name="mirrorpool-monitor"
                )
                await self._keep(node, conn)
            cur = await conn.execute(query, params, prepare=False)
            return [tuple(row) for row in await cur.fetchall()]
        except BaseException as exc:
            if isinstance(exc, psycopg.DatabaseError) and conn is not None and not conn.closed:
                raise  # the server refused the query; the connection is fine
            if self._conns.get(node.name) is conn:
                self._conns[node.name] = None
            if conn is not None:
                await conn.close()
            raise

    async def _keep(self, node: Node, conn: psycopg.AsyncConnection[Any]) -> None:
        """Keep `conn` as the node's monitor connection (one per node: a probe and an ask()
        that both opened one leave only the later)."""
        old = self._conns.get(node.name)
        self._conns[node.name] = conn
        if old is not None and old is not conn:
            await old.close()

    def _abandon(self, node: Node, task: asyncio.Task[Any]) -> None:
        # psycopg answers a cancelled query by sending a cancel request and waiting for
        # the server (psycopg issue 1371): leave that to run in the background.
        self._conns[node.name] = None
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not warn about it

    def _record_success(self, node: Node, row: tuple[Any, ...], latency_ms: float) -> None:
        state = node.state
        was = replace(state)
        state.in_recovery, state.timeline, state.replay_lag_s, state.replay_lag_bytes = row[:4]
        state.server = ServerIdentity.from_probe(*row[4:])
        state.latency_ms = round(latency_ms, 2)
        state.last_check = datetime.now(UTC)
        state.consecutive_failures = 0
        state.error = None
        state.reachable = True
        if (
            was.reachable is not True
            or was.in_recovery != state.in_recovery
            or was.server != state.server
        ):
            state.last_change = state.last_check
            self._on_change(node, was)

    def _record_failure(self, node: Node, exc: BaseException) -> None:
        state = node.state
        state.last_check = datetime.now(UTC)
        state.consecutive_failures += 1
        state.latency_ms = None
        state.error = redactor.scrub(str(exc).strip().splitlines()[0] if str(exc) else repr(exc))
        if counts_down(state.consecutive_failures, self.threshold) and state.reachable is not False:
            was = replace(state)
            state.reachable = False
            state.last_change = state.last_check
            self._on_change(node, was)
