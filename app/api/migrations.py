"""Migrations over HTTP: status, plan, apply, rollback, repair."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from app.api import examples
from app.api.auth import ANONYMOUS, ApiKey, scoped
from app.api.errors import problem_responses
from app.errors import MirrorpoolError
from app.migrations.history import current_version
from app.migrations.runner import Migrator

router = APIRouter(tags=["migrations"])
audit = logging.getLogger("app.audit")


async def get_migrator(request: Request) -> Migrator:
    """The Migrator built at start-up."""
    migrator: Migrator = request.app.state.migrator
    return migrator


MigratorDep = Annotated[Migrator, Depends(get_migrator)]


def actor_of(request: Request, key: ApiKey) -> str:
    """Who is asking, for the history table and the log: the key id, or the client address
    when authentication is off."""
    if key is not ANONYMOUS:
        return f"key:{key.id}"
    client = request.client.host if request.client else "unknown"
    return f"http:{client}"


class VersionOut(BaseModel):
    """One migration version."""

    version: int
    name: str
    state: str = Field(description="pending, applied, modified, missing or failed.")
    checksum: str | None = Field(description="sha256 of the up file (CRLF folded, BOM dropped).")
    recorded_checksum: str | None
    applied_at: str | None
    applied_by: str | None
    execution_ms: int | None
    has_down: bool


class StatusOut(BaseModel):
    """Every known version, the current one and how many are pending."""

    current_version: int | None
    pending: int
    versions: list[VersionOut]


class StepOut(BaseModel):
    """A step of a plan or a run."""

    model_config = ConfigDict(extra="allow")

    version: int
    name: str
    direction: str
    file: str
    transaction: bool
    lock_timeout_ms: int | None
    warnings: list[str]
    sql: str
    status: str | None = None
    execution_ms: int | None = None


class StepsOut(BaseModel):
    """Steps planned or run."""

    steps: list[StepOut]


class ApplyIn(BaseModel):
    """Apply pending migrations up to `target` (default: all)."""

    model_config = ConfigDict(extra="forbid")

    target: int | None = Field(None, ge=0, examples=[3])
    dry_run: bool = False


class RollbackIn(BaseModel):
    """Roll back to `target` (0: before the first migration)."""

    model_config = ConfigDict(extra="forbid")

    target: int = Field(ge=0, examples=[1])
    dry_run: bool = False


class RepairIn(BaseModel):
    """Repair one version, or every failed, modified and missing one."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = None


class RepairOut(BaseModel):
    """What repair did."""

    repaired: list[dict[str, Any]]


_PROBLEMS = problem_responses(400, 401, 403, 404, 409, 503)
MigrateKey = Annotated[ApiKey, Depends(scoped("migrate"))]
AdminKey = Annotated[ApiKey, Depends(scoped("admin"))]


@router.get("/v1/migrations", summary="Migration status", responses=_PROBLEMS)
async def status(migrator: MigratorDep, _key: MigrateKey) -> StatusOut:
    """Every version known to the files or the history table, with its state."""
    versions = await migrator.status()
    return StatusOut(
        current_version=current_version(versions),
        pending=sum(1 for v in versions if v.state == "pending"),
        versions=[VersionOut(**v.as_json()) for v in versions],
    )


@router.get("/v1/migrations/plan", summary="Plan a migration", responses=_PROBLEMS)
async def plan(
    migrator: MigratorDep, _key: MigrateKey, target: Annotated[int | None, Query(ge=0)] = None
) -> StepsOut:
    """The ordered steps (up or down) to `target`, with their SQL and warnings. Runs nothing."""
    return StepsOut(steps=[StepOut(**s.as_json()) for s in await migrator.plan(target)])


async def _run(
    migrator: Migrator, action: str, target: int | None, dry_run: bool, actor: str
) -> StepsOut:
    """Apply or roll back, with one audit line saying who did what and how it ended."""
    run = migrator.apply if action == "apply" else migrator.rollback
    try:
        steps = await run(target, dry_run=dry_run, actor=actor)  # type: ignore[arg-type]
    except MirrorpoolError as exc:
        audit.warning("%s %s target=%s: failed: %s", actor, action, target, exc.detail)
        raise
    audit.info("%s %s target=%s dry_run=%s: %d steps", actor, action, target, dry_run, len(steps))
    return StepsOut(steps=[StepOut(**s) for s in steps])


@router.post("/v1/migrations/apply", summary="Apply migrations", responses=_PROBLEMS)
async def apply(
    migrator: MigratorDep,
    request: Request,
    key: MigrateKey,
    body: Annotated[ApplyIn | None, Body(openapi_examples=examples.APPLY)] = None,
) -> StepsOut:
    """Apply pending versions in order, one transaction per file; 409 if an applied file
    changed or went missing, or another run holds the lock."""
    body = body or ApplyIn()
    return await _run(migrator, "apply", body.target, body.dry_run, actor_of(request, key))


@router.post("/v1/migrations/rollback", summary="Roll back migrations", responses=_PROBLEMS)
async def rollback(
    migrator: MigratorDep, request: Request, body: RollbackIn, key: MigrateKey
) -> StepsOut:
    """Run down files to `target`; refused before anything runs if a step has no down file."""
    return await _run(migrator, "rollback", body.target, body.dry_run, actor_of(request, key))


@router.post("/v1/migrations/repair", summary="Repair the history", responses=_PROBLEMS)
async def repair(
    migrator: MigratorDep, request: Request, key: AdminKey, body: RepairIn | None = None
) -> RepairOut:
    """Clear failed entries, re-record checksums of intentionally edited files (admin)."""
    body = body or RepairIn()
    actor = actor_of(request, key)
    repaired = await migrator.repair(body.version, actor=actor)
    audit.info("%s repair version=%s: %s", actor, body.version, repaired or "nothing to do")
    return RepairOut(repaired=repaired)
