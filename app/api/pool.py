"""/pool/stats: each node's pool figures, role and probe results, and recent events."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.api.auth import Keyring, require
from app.api.deps import ClusterDep, SettingsDep
from app.api.errors import problem_responses
from app.cluster.events import EventKind
from app.cluster.node import Node, Role

router = APIRouter(tags=["probes"])


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
    pool: dict[str, int] = Field(
        description="psycopg_pool get_stats(): pool_min, pool_max, pool_size, pool_available, "
        "requests_waiting, requests_num, requests_queued, requests_wait_ms, requests_errors, "
        "usage_ms, returns_bad, connections_num, connections_ms, connections_errors, "
        "connections_lost."
    )


class EventOut(BaseModel):
    """A transition of a node or of the writer."""

    time: datetime
    kind: EventKind
    node: str | None
    reason: str


class PoolStats(BaseModel):
    """Every node's pool and state, the writer, and the recent events."""

    writer: str | None
    nodes: list[NodeStats]
    events: list[EventOut] = Field(description="Recent events, oldest first (bounded).")
    event_counts: dict[EventKind, int] = Field(description="Events of each kind since start.")


def _node_stats(node: Node) -> NodeStats:
    s = node.state
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
        pool=node.pool_stats(),
    )


async def _stats_reader(request: Request, settings: SettingsDep) -> None:
    if not settings.pool_stats_public:
        keyring: Keyring = request.app.state.keyring
        require(keyring.identify(request.scope), "admin")


@router.get(
    "/pool/stats",
    summary="Pool statistics and node states",
    dependencies=[Depends(_stats_reader)],
    responses=problem_responses(401, 403),
)
async def pool_stats(cluster: ClusterDep) -> PoolStats:
    """Per node: psycopg_pool's figures, observed role, reachability and last check."""
    return PoolStats(
        writer=cluster.writer.name if cluster.writer else None,
        nodes=[_node_stats(n) for n in cluster.nodes],
        events=[
            EventOut(time=e.time, kind=e.kind, node=e.node, reason=e.reason)
            for e in cluster.events.recent()
        ],
        event_counts=dict(cluster.events.counts),
    )
