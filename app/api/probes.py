"""Health probes: /health (summary), /health/live (process), /health/ready (can serve), and
/metrics (Prometheus text format, app/api/metrics.py)."""

from __future__ import annotations

import os
from typing import Literal

from fastapi import APIRouter, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from app.api.auth import Keyring
from app.api.deps import ClusterDep, SettingsDep
from app.api.metrics import Metrics
from app.cluster.cluster import HealthStatus
from app.cluster.node import Role
from app.errors import Unauthorized
from app.service.keys import require
from app.settings import Settings

router = APIRouter(tags=["probes"])


class NodeStatus(BaseModel):
    """One node as the health monitor last saw it: what anyone may know."""

    name: str = Field(examples=["primary"])
    role: Role = Field(description="Observed role: primary, mirror, or unknown when unreachable.")
    reachable: bool | None = Field(description="null until the first probe has finished.")


class NodeHealth(NodeStatus):
    """One node, with where it is (for a key with the read scope)."""

    target: str = Field(description="host:port/dbname (no credentials).", examples=["db:5432/app"])
    alias_of: str | None = Field(
        None, description="Set when the node leads to the same server as the node named."
    )


class HealthSummary(BaseModel):
    """The service's view of the database cluster, as anyone may see it."""

    status: HealthStatus = Field(
        description="ok: a writer and every node reachable; degraded: some node is "
        "unreachable or no node accepts writes, but something serves; down: nothing serves."
    )
    writer: str | None = Field(description="Name of the node that takes writes, if any.")
    nodes: list[NodeStatus]


class HealthReport(HealthSummary):
    """The same with the details: reasons (PostgreSQL's error texts), warnings and each
    node's host, port and database (for a key with the read scope, or
    MIRRORPOOL_HEALTH_DETAILS=public)."""

    reasons: list[str] = Field(description="Why the status is not ok.")
    warnings: list[str] = Field(
        default_factory=list,
        description="What is allowed but unsafe, such as a superuser login permitted by "
        "MIRRORPOOL_ALLOW_SUPERUSER=true.",
    )
    nodes: list[NodeHealth]  # type: ignore[assignment]


class Liveness(BaseModel):
    """The process is up and serving HTTP."""

    status: Literal["alive"] = "alive"


class Readiness(BaseModel):
    """Whether requests of the asked intent can be served now."""

    ready: bool
    intent: Literal["write", "read"]
    writer: str | None
    readers: list[str] = Field(description="Reachable nodes that can serve reads.")


@router.get(
    "/health",
    summary="Cluster health summary",
    responses={
        503: {"model": HealthReport, "description": "No node can serve (status down)."},
    },
)
async def health(
    request: Request, cluster: ClusterDep, settings: SettingsDep, response: Response
) -> HealthReport | HealthSummary:
    """ok, degraded or down, and every node's reachability and role; with a key holding the
    `read` scope (or MIRRORPOOL_HEALTH_DETAILS=public), also the reasons, the warnings and
    each node's host, port and database."""
    summary = cluster.health()
    # With several workers, each watches the cluster itself: this one answered.
    response.headers["X-Mirrorpool-Worker"] = str(os.getpid())
    if summary.status is HealthStatus.DOWN:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    writer = cluster.writer.name if cluster.writer else None
    if not _shows_details(request, settings):
        nodes = [NodeStatus(name=n.name, role=n.role, reachable=n.state.reachable)
                 for n in cluster.nodes]  # fmt: skip
        return HealthSummary(status=summary.status, writer=writer, nodes=nodes)
    return HealthReport(
        status=summary.status,
        writer=writer,
        reasons=summary.reasons,
        warnings=cluster.warnings,
        nodes=[
            NodeHealth(
                name=n.name,
                role=n.role,
                reachable=n.state.reachable,
                target=n.target,
                alias_of=cluster.aliases.get(n.name),
            )
            for n in cluster.nodes
        ],
    )


def _shows_details(request: Request, settings: Settings) -> bool:
    """Hosts, ports and PostgreSQL's error texts are for those who may read: a key with the
    read scope, or anyone with MIRRORPOOL_HEALTH_DETAILS=public. Without a key (or with a
    wrong one) the summary is still given: a probe sends none."""
    if settings.health_details == "public":
        return True
    keyring: Keyring = request.app.state.keyring
    try:
        return keyring.identify(request.scope).can("read")
    except Unauthorized:
        return False


@router.get("/health/live", summary="Liveness probe")
async def live() -> Liveness:
    """200 while the process serves HTTP, whatever the database does."""
    return Liveness()


@router.get(
    "/health/ready",
    summary="Readiness probe",
    responses={503: {"model": Readiness, "description": "Not ready for the asked intent."}},
)
async def ready(
    cluster: ClusterDep, response: Response, intent: Literal["write", "read"] = "write"
) -> Readiness:
    """200 when a writer is reachable; with `intent=read`, when any node can serve reads.

    Point a Kubernetes readiness probe at `?intent=read` to keep serving reads from the
    mirror while the primary is down.
    """
    readers = [n.name for n in cluster.readers()]
    ok = cluster.writer is not None if intent == "write" else bool(readers)
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(
        ready=ok,
        intent=intent,
        writer=cluster.writer.name if cluster.writer else None,
        readers=readers,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text format."}},
)
async def metrics(request: Request) -> Response:
    """Requests, latency, nodes, pools, replication lag, cluster events and query problems.
    Open unless MIRRORPOOL_METRICS_PUBLIC=false (then it needs the admin scope)."""
    if not request.app.state.settings.metrics_public:
        require(request.app.state.keyring.identify(request.scope), "admin")
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
