"""Health probes: /health (summary), /health/live (process) and /health/ready (can serve)."""

from __future__ import annotations

import os
from typing import Literal

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field

from app.api.deps import ClusterDep
from app.cluster.cluster import HealthStatus
from app.cluster.node import Role

router = APIRouter(tags=["probes"])


class NodeHealth(BaseModel):
    """One node as the health monitor last saw it."""

    name: str = Field(examples=["primary"])
    role: Role = Field(description="Observed role: primary, mirror, or unknown when unreachable.")
    reachable: bool | None = Field(description="null until the first probe has finished.")
    target: str = Field(description="host:port/dbname (no credentials).", examples=["db:5432/app"])
    alias_of: str | None = Field(
        None, description="Set when the node leads to the same server as the node named."
    )


class HealthReport(BaseModel):
    """The service's view of the database cluster."""

    status: HealthStatus = Field(
        description="ok: a writer and every node reachable; degraded: some node is "
        "unreachable or no node accepts writes, but something serves; down: nothing serves."
    )
    writer: str | None = Field(description="Name of the node that takes writes, if any.")
    reasons: list[str] = Field(description="Why the status is not ok.")
    warnings: list[str] = Field(
        default_factory=list,
        description="What is allowed but unsafe, such as a superuser login permitted by "
        "MIRRORPOOL_ALLOW_SUPERUSER=true.",
    )
    nodes: list[NodeHealth]


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
    responses={503: {"model": HealthReport, "description": "No node can serve (status down)."}},
)
async def health(cluster: ClusterDep, response: Response) -> HealthReport:
    """ok, degraded or down, with the reasons and every node's reachability and role."""
    summary = cluster.health()
    # With several workers, each watches the cluster itself: this one answered.
    response.headers["X-Mirrorpool-Worker"] = str(os.getpid())
    if summary.status is HealthStatus.DOWN:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthReport(
        status=summary.status,
        writer=cluster.writer.name if cluster.writer else None,
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
