"""/pool/stats: each node's pool figures, role and probe results, and recent events."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from app import workers
from app.api.auth import Keyring
from app.api.deps import ClusterDep, EngineDep, SettingsDep
from app.api.errors import problem_responses
from app.cluster.cluster import Cluster
from app.cluster.events import EventKind
from app.cluster.node import Node, Role
from app.service.keys import require
from app.sql.engine import Engine

router = APIRouter(tags=["probes"])


class LaneStatsOut(BaseModel):
    """Quick plain statements sent pipelined on shared connections (app/sql/multiplex.py)."""

    statements: int = Field(description="Statements sent through the lane.")
    batches: int = Field(description="Pipelines sent; statements / batches is the sharing.")
    mean_batch: float
    largest_batch: int


class ServerOut(BaseModel):
    """The server a node's last successful probe reached. Two nodes showing the same
    system identifier and start time lead to one server: one of them is an alias."""

    system_identifier: str = Field(
        description="pg_control_system(): made by initdb, shared "
        "by a primary and its replicas (int8, as a string)."
    )
    started: datetime = Field(description="pg_postmaster_start_time().")
    address: str | None = Field(
        description="inet_server_addr(): where the server saw the "
        "probe arrive (null over a Unix socket)."
    )
    port: int | None = Field(description="inet_server_port().")


class NodeStats(BaseModel):
    """One node: its pool's counters and what the health monitor saw."""

    name: str = Field(examples=["primary"])
    target: str = Field(description="host:port/dbname (no credentials).")
    role: Role
    reachable: bool | None
    in_recovery: bool | None = Field(description="pg_is_in_recovery() at the last probe.")
    timeline: int | None
    replay_lag_s: float | None = Field(description="Mirrors: seconds of WAL not yet replayed.")
    replay_lag_bytes: int | None = Field(description="Mirrors: bytes received, not replayed.")
    probe_latency_ms: float | None
    last_check: datetime | None
    consecutive_failures: int
    error: str | None = Field(description="Why the last probe failed (no credentials).")
    server: ServerOut | None = Field(description="The server the node leads to.")
    alias_of: str | None = Field(
        description="The node this one leads to the same server as: an alias takes no "
        "traffic of its own and never counts as a second writer."
    )
    pool: dict[str, int] = Field(
        description="psycopg_pool get_stats(): pool_min, pool_max, pool_size, pool_available, "
        "requests_waiting, requests_num, requests_queued, requests_wait_ms, requests_errors, "
        "usage_ms, returns_bad, connections_num, connections_ms, connections_errors, "
        "connections_lost."
    )
    multiplexing: LaneStatsOut | None = Field(
        None, description="Absent when MIRRORPOOL_MULTIPLEX is off or behind PgBouncer."
    )
    backends_ending: int = Field(
        0,
        description="Connections given up on mid-statement (deadline, client gone) whose "
        "backends are being ended; each counts against its pool until its backend is gone.",
    )
    key_lines_waiting: int = Field(
        0,
        description="Requests waiting in their key's own line: the key holds its share of a "
        "pool of the node (MIRRORPOOL_KEY_MAX_POOL_SHARE).",
    )
    logins: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="The pools of the database roles keys log in as (opened on first use, "
        "up to MIRRORPOOL_ROLE_POOL_MAX_SIZE each), by role: the same counters as `pool`.",
    )


class EventOut(BaseModel):
    """A transition of a node or of the writer."""

    time: datetime
    kind: EventKind
    node: str | None
    reason: str


class WorkerOut(BaseModel):
    """One worker process's pools, as it last wrote them (every second)."""

    pid: int
    live: bool = Field(description="False once the worker has stopped.")
    updated: datetime
    pools: dict[str, dict[str, int]] = Field(
        description="By node: the same figures as a node's `pool`, of this worker's pool."
    )


class SchemaOut(BaseModel):
    """What the catalog says of code that statements run out of the parser's sight."""

    known: bool = Field(
        description="False before the first reading, and after a schema change made through "
        "mirrorpool until the next one: meanwhile every statement that names a relation or "
        "an unqualified function has its connection reset after it."
    )
    read_at: datetime | None = Field(description="When the catalog was last found current.")
    relations_run_code: int = Field(
        description="Relations whose reading or writing runs such code (a view's, a trigger's, "
        "a default's, a policy's...): statements touching them are reset after."
    )
    own_functions: int = Field(description="Function names of the database's own.")


class PoolStats(BaseModel):
    """Every node's pool and state, the writer, and the recent events."""

    writer: str | None
    nodes: list[NodeStats]
    events: list[EventOut] = Field(description="Recent events, oldest first (bounded).")
    event_counts: dict[EventKind, int] = Field(description="Events of each kind since start.")
    worker: int = Field(
        description="Process id of the worker that answered: `nodes` shows its pools. With "
        "MIRRORPOOL_WORKERS > 1 each worker has pools of its own: `workers` lists them all "
        "(and /metrics adds them up)."
    )
    workers: list[WorkerOut] = Field(
        default_factory=list, description="Every worker's pools; empty with one worker."
    )
    schema_code: SchemaOut = Field(description="This worker's reading of the catalog.")


def _node_stats(node: Node, cluster: Cluster, engine: Engine) -> NodeStats:
    s = node.state
    lane = engine.mux.stats(node.name) if engine.mux is not None else None
    server = (
        ServerOut(
            system_identifier=str(s.server.system_identifier),
            started=s.server.started,
            address=s.server.address,
            port=s.server.port,
        )
        if s.server is not None
        else None
    )
    return NodeStats(
        name=node.name,
        target=node.target,
        role=node.role,
        reachable=s.reachable,
        in_recovery=s.in_recovery,
        timeline=s.timeline,
        replay_lag_s=s.replay_lag_s,
        replay_lag_bytes=s.replay_lag_bytes,
        probe_latency_ms=s.latency_ms,
        last_check=s.last_check,
        consecutive_failures=s.consecutive_failures,
        error=s.error,
        server=server,
        alias_of=cluster.aliases.get(node.name),
        pool=node.pool_stats(),
        multiplexing=LaneStatsOut(**lane.as_json()) if lane is not None else None,
        backends_ending=cluster.backends.held(node.name),
        key_lines_waiting=sum(share.waiting() for share in node.shares.values()),
        logins={role: node.pool_stats(role) for role in node.logins},
    )


async def _stats_reader(request: Request, settings: SettingsDep) -> None:
    if not settings.pool_stats_public:
        keyring: Keyring = request.app.state.keyring
        require(keyring.identify(request.scope), "admin")


@router.get(
    "/pool/stats",
    summary="Pool statistics and node states",
    response_model=PoolStats,
    dependencies=[Depends(_stats_reader)],
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "JSON, or aligned text with ?format=text.",
        },
        **problem_responses(401, 403),
    },
)
async def pool_stats(
    cluster: ClusterDep,
    engine: EngineDep,
    format: Literal["json", "text"] = "json",
) -> PoolStats | Response:
    """Per node: psycopg_pool's figures, observed role, reachability and last check.
    `?format=text` gives the same at a glance, for a terminal."""
    stats = _stats(cluster, engine)
    if format == "text":
        return Response(_as_text(stats), media_type="text/plain; charset=utf-8")
    return stats


def _stats(cluster: Cluster, engine: Engine) -> PoolStats:
    return PoolStats(
        writer=cluster.writer.name if cluster.writer else None,
        nodes=[_node_stats(n, cluster, engine) for n in cluster.nodes],
        events=[
            EventOut(time=e.time, kind=e.kind, node=e.node, reason=e.reason)
            for e in cluster.events.recent()
        ],
        event_counts=dict(cluster.events.counts),
        worker=os.getpid(),
        workers=_workers(cluster),
        schema_code=_schema(engine),
    )


def _schema(engine: Engine) -> SchemaOut:
    watch = engine.schema
    facts = watch.current
    read_at = watch.read_at_wall
    return SchemaOut(
        known=facts.known,
        read_at=datetime.fromtimestamp(read_at, UTC) if read_at is not None else None,
        relations_run_code=len(facts.read_coded | facts.write_coded),
        own_functions=len(facts.own_functions),
    )


def _workers(cluster: Cluster) -> list[WorkerOut]:
    directory = workers.shared_dir()
    if directory is None:
        return []
    shots = workers.read_all(directory, workers.snapshot(cluster))
    return [
        WorkerOut(
            pid=s.pid, live=s.live, updated=datetime.fromtimestamp(s.updated, UTC), pools=s.pools
        )
        for s in sorted(shots, key=lambda s: s.pid)
    ]


def _as_text(stats: PoolStats) -> str:
    """Nodes, roles, lag, pool use and recent events as aligned text."""
    lines = [f"writer: {stats.writer or 'none'}", f"worker: {stats.worker}", ""]
    header = f"{'node':<10} {'role':<8} {'up':<4} {'lag s':>7} {'pool':>9} {'waiting':>7}  target"
    lines.append(header)
    for n in stats.nodes:
        lag = f"{n.replay_lag_s:.2f}" if n.replay_lag_s is not None else "-"
        used = f"{n.pool['pool_size'] - n.pool['pool_available']}/{n.pool['pool_size']}"
        up = "yes" if n.reachable else "no"
        lines.append(
            f"{n.name:<10} {n.role.value:<8} {up:<4} {lag:>7} {used:>9} "
            f"{n.pool['requests_waiting']:>7}  {n.target}"
        )
        if n.alias_of:
            lines.append(f"{'':<10} alias of {n.alias_of}: the same server, no traffic of its own")
        if n.error:
            lines.append(f"{'':<10} last error: {n.error}")
    if stats.workers:
        lines += ["", "workers (pool in use/size by node):"]
        lines += [
            f"  {w.pid:<8} {'live' if w.live else 'stopped':<8} "
            + "  ".join(
                f"{n} {p['pool_size'] - p['pool_available']}/{p['pool_size']}"
                for n, p in w.pools.items()
            )
            for w in stats.workers
        ]
    lines += ["", "recent events:"]
    lines += [
        f"  {e.time:%Y-%m-%d %H:%M:%S} {e.kind.value:<15} {e.node or '':<10} {e.reason}"
        for e in stats.events[-20:]
    ] or ["  none"]
    return "\n".join(lines) + "\n"
