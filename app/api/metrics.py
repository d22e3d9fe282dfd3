"""What GET /metrics shows (app/api/probes.py serves it): request counters, and the cluster's
own state.

Request figures are counted as requests finish; node, pool and event figures are read from
the cluster when Prometheus scrapes, so they never drift from what /pool/stats shows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import workers
from app.cluster.cluster import Cluster
from app.cluster.events import EventKind
from app.cluster.node import Role
from app.errors import (
    ClientGone,
    DatabaseError,
    MirrorpoolError,
    NodeFailed,
    OutcomeUnknown,
    QueryTimeout,
)
from app.migrations.history import State, current_version
from app.migrations.runner import Migrator


class Metrics:
    """The service's registry and its request-level instruments."""

    def __init__(self, cluster: Cluster, migrator: Migrator) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mirrorpool_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mirrorpool_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and method.",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.problems = Counter(
            "mirrorpool_query_problems",
            "Failed statements by kind: timeout, cancelled (client left), node_failed, "
            "outcome_unknown, database.",
            ["kind"],
            registry=self.registry,
        )
        self.cluster_collector = ClusterCollector(cluster, migrator)
        self.registry.register(self.cluster_collector)

    def render(self) -> bytes:
        """The exposition text: of this process, or of every worker (app/workers.py)."""
        directory = workers.shared_dir()
        if directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
        registry.register(self.cluster_collector)
        return generate_latest(registry)


class ClusterCollector(Collector):
    """Per-node and per-event figures, read from the cluster at scrape time."""

    def __init__(self, cluster: Cluster, migrator: Migrator) -> None:
        self.cluster = cluster
        self.migrator = migrator

    def _login_pools(self) -> Iterator[Metric]:
        """The pools of the roles keys log in as (app/cluster/node.py Node.logins)."""
        size = GaugeMetricFamily(
            "mirrorpool_login_pool_size", "Open connections of a key role's pool.",
            labels=["node", "login"],
        )  # fmt: skip
        waiting = GaugeMetricFamily(
            "mirrorpool_login_pool_waiting_requests", "Requests waiting for a key role's pool.",
            labels=["node", "login"],
        )  # fmt: skip
        shots = self._shots()
        for node in self.cluster.nodes:
            logins = {r for shot in shots for r in shot.logins.get(node.name, {})}
            for login in sorted(logins):
                figures = [s.logins[node.name][login] for s in workers.live(shots)
                           if login in s.logins.get(node.name, {})]  # fmt: skip
                size.add_metric([node.name, login], sum(f["pool_size"] for f in figures))
                waiting.add_metric([node.name, login], sum(f["requests_waiting"] for f in figures))
        yield from (size, waiting)

    def _shots(self) -> list[workers.Snapshot]:
        """This process's figures, and every other worker's when there are several."""
        own = workers.snapshot(self.cluster)
        directory = workers.shared_dir()
        return [own] if directory is None else workers.read_all(directory, own)

    def collect(self) -> Iterator[Metric]:
        """Yield the node, pool and event metrics."""
        up = GaugeMetricFamily(
            "mirrorpool_node_up", "1 when the node answers probes.", labels=["node"]
        )
        role = GaugeMetricFamily(
            "mirrorpool_node_role", "1 for the node's observed role.", labels=["node", "role"]
        )
        writer = GaugeMetricFamily("mirrorpool_node_writer", "1 for the writer.", labels=["node"])
        fenced = GaugeMetricFamily("mirrorpool_node_fenced", "1 when fenced.", labels=["node"])
        alias = GaugeMetricFamily(
            "mirrorpool_node_alias",
            "1 when the node leads to the same server as another configured node.",
            labels=["node"],
        )
        lag_s = GaugeMetricFamily(
            "mirrorpool_node_replication_lag_seconds", "Replay lag of a mirror.", labels=["node"]
        )
        lag_b = GaugeMetricFamily(
            "mirrorpool_node_replication_lag_bytes", "WAL received, not replayed.", labels=["node"]
        )
        size = GaugeMetricFamily(
            "mirrorpool_pool_connections", "Pool connections.", labels=["node"]
        )
        available = GaugeMetricFamily(
            "mirrorpool_pool_available_connections", "Idle pool connections.", labels=["node"]
        )
        waiting = GaugeMetricFamily(
            "mirrorpool_pool_waiting_requests",
            "Requests waiting for a connection.",
            labels=["node"],
        )
        opened = CounterMetricFamily(
            "mirrorpool_pool_connections_opened", "Connections the pool opened.", labels=["node"]
        )
        lost = CounterMetricFamily(
            "mirrorpool_pool_connections_lost", "Connections found broken.", labels=["node"]
        )
        refused = CounterMetricFamily(
            "mirrorpool_pool_request_errors", "Pool requests that failed or timed out.",
            labels=["node"],
        )  # fmt: skip
        shots = self._shots()
        for node in self.cluster.nodes:
            s = node.state
            up.add_metric([node.name], 1.0 if s.reachable else 0.0)
            for r in Role:
                role.add_metric([node.name, r.value], 1.0 if node.role is r else 0.0)
            writer.add_metric([node.name], 1.0 if node is self.cluster.writer else 0.0)
            fenced.add_metric([node.name], 1.0 if node.name in self.cluster.fenced else 0.0)
            alias.add_metric([node.name], 1.0 if node.name in self.cluster.aliases else 0.0)
            if s.replay_lag_s is not None:
                lag_s.add_metric([node.name], s.replay_lag_s)
            if s.replay_lag_bytes is not None:
                lag_b.add_metric([node.name], float(s.replay_lag_bytes))
            # Pools are per worker: gauges add up over the workers running, counters over
            # every worker that ran (app/workers.py).
            now = [s.pools[node.name] for s in workers.live(shots) if node.name in s.pools]
            ever = [s.pools[node.name] for s in shots if node.name in s.pools]
            size.add_metric([node.name], sum(p["pool_size"] for p in now))
            available.add_metric([node.name], sum(p["pool_available"] for p in now))
            waiting.add_metric([node.name], sum(p["requests_waiting"] for p in now))
            opened.add_metric([node.name], sum(p["connections_num"] for p in ever))
            lost.add_metric([node.name], sum(p.get("connections_lost", 0) for p in ever))
            refused.add_metric([node.name], sum(p.get("requests_errors", 0) for p in ever))
        yield from (up, role, writer, fenced, alias, lag_s, lag_b, size, available, waiting)
        yield from (opened, lost, refused)
        yield from self._login_pools()
        events = CounterMetricFamily(
            "mirrorpool_cluster_events", "Cluster transitions by kind.", labels=["kind"]
        )
        for kind in EventKind:
            # Every worker watches the cluster itself and sees the same transitions: the
            # service saw as many as the worker that saw most.
            events.add_metric([kind.value], max(s.events.get(kind.value, 0) for s in shots))
        yield events
        seen = self.migrator.last_seen
        if seen is not None:
            # As of the last migration status, plan or run (any replica's runs show on its
            # next status call). A dotted version (Flyway's 1.2) is no number: left out.
            current = current_version(seen)
            number = 0 if current is None else current.number
            if number is not None:
                yield GaugeMetricFamily(
                    "mirrorpool_migration_version", "Highest applied migration version.",
                    value=float(number),
                )  # fmt: skip
            yield GaugeMetricFamily(
                "mirrorpool_migrations_pending", "Migration files not applied yet.",
                value=float(sum(1 for v in seen if v.state is State.PENDING)),
            )  # fmt: skip


class MetricsMiddleware:
    """Counts every HTTP request by route template (not raw path), method and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._instruments: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            key = (template, scope["method"], status)
            instruments = self._instruments.get(key)
            if instruments is None:
                # Route templates, methods and statuses are few: look each label set up once.
                instruments = self._instruments[key] = (
                    self.metrics.requests.labels(template, key[1], str(status)),
                    self.metrics.latency.labels(template, key[1]),
                )
            instruments[0].inc()
            instruments[1].observe(time.perf_counter() - started)


_PROBLEM_KINDS: tuple[tuple[type[MirrorpoolError], str], ...] = (
    (QueryTimeout, "timeout"),
    (ClientGone, "cancelled"),
    (NodeFailed, "node_failed"),
    (OutcomeUnknown, "outcome_unknown"),
    (DatabaseError, "database"),
)


def count_problem(scope: Scope | None, exc: MirrorpoolError) -> None:
    """Count a failed statement in the app's metrics (a 57014 from the server is a timeout)."""
    app = scope.get("app") if scope else None
    metrics: Metrics | None = getattr(getattr(app, "state", None), "metrics", None)
    if metrics is None:
        return
    kind = next((k for cls, k in _PROBLEM_KINDS if isinstance(exc, cls)), None)
    if isinstance(exc, DatabaseError) and exc.sqlstate == "57014":
        kind = "timeout"
    if kind is not None:
        metrics.problems.labels(kind).inc()
