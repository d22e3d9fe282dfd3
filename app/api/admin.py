"""Operator actions: promote a mirror, clear a fence."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import ClusterDep
from app.api.errors import problem_responses

router = APIRouter(tags=["admin"])


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
    responses=problem_responses(404, 409, 503),
)
async def promote(body: NodeRef, cluster: ClusterDep) -> PromoteOut:
    """Run pg_promote() on the named mirror and wait until it takes writes. Use it only when
    nothing else (Patroni, CloudNativePG) manages promotion, and after making sure the old
    primary is really gone: mirrorpool fences an old primary that comes back, but other
    clients writing to it directly would not be stopped."""
    node = await cluster.promote(body.node, "promoted on request (POST /v1/admin/promote)")
    return PromoteOut(node=node.name, writer=cluster.writer.name if cluster.writer else None)


@router.post("/v1/admin/unfence", summary="Clear a fence", responses=problem_responses(404, 409))
async def unfence(body: NodeRef, cluster: ClusterDep) -> UnfenceOut:
    """Let a fenced node take traffic again (after an operator has reconciled it)."""
    return UnfenceOut(node=body.node, unfenced=cluster.unfence(body.node))
