"""Migrations over HTTP: status, plan, apply, rollback, baseline, repair."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from app.api import examples
from app.api.auth import scoped
from app.api.errors import problem_responses
from app.api.json_body import JsonRoute
from app.errors import MigrationDrift, MirrorpoolError, RequestError
from app.migrations.history import State, current_version
from app.migrations.runner import Migrator
from app.migrations.versions import Version
from app.service.keys import ANONYMOUS, ApiKey

router = APIRouter(tags=["migrations"], route_class=JsonRoute)
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


# A version as the folder spells it ("3", "1.2", "2023.01.02"); a JSON number is read as one.
TargetIn = Annotated[
    str | int, Field(examples=["3", "1.2"], description="A version as the folder spells it.")
]


def version_of(target: str | int | None) -> Version | None:
    """The version a request names; 400 when it is not one."""
    if target is None:
        return None
    try:
        return Version.parse(str(target))
    except ValueError as exc:
        raise RequestError(str(exc)) from None


class VersionOut(BaseModel):
    """One migration version, or one repeatable script (no version)."""

    version: str | None = Field(description="As the folder spells it; null for a repeatable.")
    name: str
    repeatable: bool
    state: str = Field(
        description="pending, applied, modified, missing, failed, or baseline (applied by "
        "another tool; recorded as applied by the next apply)."
    )
    file: str | None
    checksum: str | None = Field(description="sha256 of the up file (CRLF folded, BOM dropped).")
    recorded_checksum: str | None
    applied_at: str | None
    applied_by: str | None
    execution_ms: int | None
    has_down: bool
    baseline_from: str | None = Field(description="For baseline: the other tool's table.")


class StatusOut(BaseModel):
    """Every known version, the current one and how many are pending."""

    format: str | None = Field(description="mirrorpool (golang-migrate's too), flyway or dbmate.")
    current_version: str | None
    pending: int
    versions: list[VersionOut]


class StepOut(BaseModel):
    """A step of a plan or a run."""

    model_config = ConfigDict(extra="allow")

    version: str | None
    name: str
    repeatable: bool
    direction: str = Field(description="up, down, or baseline (recorded, not run).")
    file: str
    transaction: bool
    outside_transaction: str | None = Field(
        description="Why the file runs outside a transaction: its directive, or the statement "
        "that cannot run inside one (CREATE INDEX CONCURRENTLY...)."
    )
    lock_timeout_ms: int | None
    warnings: list[str]
    baseline_from: str | None
    sql: str
    status: str | None = None
    execution_ms: int | None = None


class StepsOut(BaseModel):
    """Steps planned or run."""

    steps: list[StepOut]


class ApplyIn(BaseModel):
    """Apply pending migrations up to `target` (default: all)."""

    model_config = ConfigDict(extra="forbid")

    target: TargetIn | None = None
    dry_run: bool = False


class RollbackIn(BaseModel):
    """Roll back to `target` (0: before the first migration)."""

    model_config = ConfigDict(extra="forbid")

    target: TargetIn
    dry_run: bool = False


class RepairIn(BaseModel):
    """Repair one version, or every failed, modified and missing one."""

    model_config = ConfigDict(extra="forbid")

    version: TargetIn | None = None


class RepairOut(BaseModel):
    """What repair did."""

    repaired: list[dict[str, Any]]


class BaselineOut(BaseModel):
    """The versions recorded as applied, from another tool's history table."""

    steps: list[StepOut]


_PROBLEMS = problem_responses(400, 401, 403, 404, 409, 503)
MigrateKey = Annotated[ApiKey, Depends(scoped("migrate"))]
AdminKey = Annotated[ApiKey, Depends(scoped("admin"))]


@router.get("/v1/migrations", summary="Migration status", responses=_PROBLEMS)
async def status(migrator: MigratorDep, _key: MigrateKey) -> StatusOut:
    """Every version known to the files or the history table, with its state."""
    versions = await migrator.status()
    current = current_version(versions)
    return StatusOut(
        format=migrator.format,
        current_version=str(current) if current is not None else None,
        pending=sum(1 for v in versions if v.state is State.PENDING),
        versions=[VersionOut(**v.as_json()) for v in versions],
    )


@router.get("/v1/migrations/plan", summary="Plan a migration", responses=_PROBLEMS)
async def plan(
    migrator: MigratorDep, _key: MigrateKey, target: Annotated[str | None, Query()] = None
) -> StepsOut:
    """The ordered steps (baseline, up or down) to `target`, with their SQL, transaction mode
    and warnings. Runs nothing."""
    steps = await migrator.plan(version_of(target))
    return StepsOut(steps=[StepOut(**s.as_json()) for s in steps])


async def _run(
    migrator: Migrator, action: str, target: str | int | None, dry_run: bool, actor: str
) -> StepsOut:
    """Apply or roll back, with one audit line saying who did what and how it ended."""
    version = version_of(target)
    try:
        if action == "apply":
            steps = await migrator.apply(version, dry_run=dry_run, actor=actor)
        else:
            assert version is not None
            steps = await migrator.rollback(version, dry_run=dry_run, actor=actor)
    except MigrationDrift as exc:
        exc.detail += " (POST /v1/migrations/repair)"
        audit.warning("%s %s target=%s: failed: %s", actor, action, target, exc.detail)
        raise
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
    """Clear failed entries, forget missing files, re-record checksums of intentionally
    edited files: of one version, or of everything that drifted (admin)."""
    body = body or RepairIn()
    actor = actor_of(request, key)
    repaired = await migrator.repair(version_of(body.version), actor=actor)
    audit.info("%s repair version=%s: %s", actor, body.version, repaired or "nothing to do")
    return RepairOut(repaired=repaired)


@router.post("/v1/migrations/baseline", summary="Adopt another tool's history", responses=_PROBLEMS)
async def adopt(migrator: MigratorDep, request: Request, key: MigrateKey) -> BaselineOut:
    """Record as applied, without running them, the versions Flyway (flyway_schema_history),
    golang-migrate or dbmate (schema_migrations) applied. Apply does the same on its first run."""
    actor = actor_of(request, key)
    steps = await migrator.baseline(actor=actor)
    audit.info("%s baseline: %d versions recorded", actor, len(steps))
    return BaselineOut(steps=[StepOut(**s) for s in steps])
