"""Operator actions: promote a mirror, clear a fence."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from app.api.auth import scoped
from app.api.deps import ClusterDep
from app.api.errors import problem_responses
from app.api.json_body import JsonRoute
from app.service.keys import ApiKey

router = APIRouter(tags=["admin"], route_class=JsonRoute)
AdminKey = Annotated[ApiKey, Depends(scoped("admin"))]


class NodeRef(BaseModel):
    """A node by name."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(examples=["mirror"])


class PromoteOut(BaseModel):
    """The promoted node, now the writer."""

    node: str
    writer: str | None


class UnfenceOut(BaseModel):
    """Whether a fence was cleared."""

    node: str
    unfenced: bool


@router.post(
    "/v1/admin/promote",
    summary="Promote a mirror",
    responses=problem_responses(401, 403, 404, 409, 503),
)
async def promote(body: NodeRef, cluster: ClusterDep, key: AdminKey) -> PromoteOut:
    """Run pg_promote() on the named mirror and wait until it takes writes. Use it only when
    nothing else (Patroni, CloudNativePG) manages promotion, and after making sure the old
    primary is really gone: mirrorpool fences an old primary that comes back, but other
    clients writing to it directly would not be stopped."""
    node = await cluster.promote(body.node, f"promoted on request by key {key.id!r}")
    return PromoteOut(node=node.name, writer=cluster.writer.name if cluster.writer else None)


@router.post(
    "/v1/admin/unfence", summary="Clear a fence", responses=problem_responses(401, 403, 404, 409)
)
async def unfence(body: NodeRef, cluster: ClusterDep, key: AdminKey) -> UnfenceOut:
    """Let a fenced node take traffic again (after an operator has reconciled it)."""
    done = cluster.unfence(body.node, by=key.id)
    return UnfenceOut(node=body.node, unfenced=done)
