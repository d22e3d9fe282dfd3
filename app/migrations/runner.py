"""Running migrations: status, plan, apply, rollback, baseline and repair, on the writer only.

Each run holds the migration lock (app/migrations/lock.py) and works on a connection of its
own to the writer, never a pool connection, so no session setting leaks into traffic. With
MIRRORPOOL_MIGRATIONS_DSN both connections go there instead: behind PgBouncer in transaction
mode the writer's DSN leads to the pooler, which does not keep a session advisory lock.

Every call reads the folder as it is then (app/migrations/folder.py), and a step's file is
read once more just before it runs. A step runs its statements one by one, so a failure names
its statement's line. A transactional step runs them and writes its history row in one
transaction, so a failure leaves nothing behind but the error. A step outside a transaction
(one statement, such as CREATE INDEX CONCURRENTLY) that fails is recorded as failed, and
further runs are refused until it is repaired. Every step runs with a lock_timeout, so a
blocked ALTER fails fast instead of queueing all traffic behind its lock request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from app.cluster.cluster import Cluster
from app.errors import Conflict, NoWriterError
from app.migrations import baseline, history
from app.migrations.failures import failure
from app.migrations.folder import MigrationFolder
from app.migrations.formats import Catalog
from app.migrations.history import State, VersionState
from app.migrations.lock import migration_lock
from app.migrations.plan import Step, plan, refuse_drift
from app.migrations.statements import runnable
from app.migrations.versions import Version
from app.redaction import redactor
from app.sql.errors import database_error

logger = logging.getLogger("app.migrations")

# The node name errors report for a run on MIRRORPOOL_MIGRATIONS_DSN.
DIRECT_NODE = "migrations_dsn"


@dataclass(frozen=True)
class MigrationSettings:
    """What a migration run needs to know."""

    lock_timeout_ms: int
    lock_wait_s: float
    statement_timeout_ms: int


class Migrator:
    """The migration engine used by the HTTP endpoints and the CLI alike."""

    def __init__(
        self,
        cluster: Cluster,
        folder: MigrationFolder,
        settings: MigrationSettings,
        direct_dsn: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.folder = folder
        self.settings = settings
        # MIRRORPOOL_MIGRATIONS_DSN (a secret): runs go there rather than to the writer.
        self.direct_dsn = direct_dsn
        # What the last status, plan or run saw, for /metrics (no query at scrape time).
        self.last_seen: list[VersionState] | None = None
        # The folder's format as last read (mirrorpool, flyway, dbmate; None when empty).
        self.format: str | None = None

    @asynccontextmanager
    async def _writer(
        self, *, locked: bool = False
    ) -> AsyncIterator[tuple[str, psycopg.AsyncConnection[Any]]]:
        """A dedicated connection to the writer (or to MIRRORPOOL_MIGRATIONS_DSN), checked to
        be out of recovery; with `locked`, the migration lock is held on the same server."""
        if self.direct_dsn is not None:
            name, dsn = DIRECT_NODE, self.direct_dsn
        else:
            writer = self.cluster.writer
            if writer is None:
                raise NoWriterError(
                    "migrations run on the writer, and no writable node is reachable"
                )
            name, dsn = writer.name, writer.dsn
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, application_name="mirrorpool-migrate"
            )
        except psycopg.OperationalError as exc:
            first = redactor.scrub(str(exc).strip().splitlines()[0] if str(exc) else repr(exc))
            raise NoWriterError(f"migrations cannot connect to {name}: {first}") from None
        try:
            cur = await conn.execute("SELECT pg_is_in_recovery()")
            row = await cur.fetchone()
            if row and row[0]:
                raise NoWriterError(f"{name} is in recovery; migrations need the writer")
            if not locked:
                yield name, conn
                return
            async with migration_lock(dsn, self.settings.lock_wait_s):
                yield name, conn
        finally:
            await conn.close()

    async def _read(
        self, conn: psycopg.AsyncConnection[Any], *, adopt: bool = True
    ) -> tuple[Catalog, list[VersionState]]:
        """The folder as it is now and each migration's state. With `adopt`, while
        mirrorpool's history does not exist yet, what another tool's history table says was
        applied counts (BASELINE)."""
        catalog = await asyncio.to_thread(self.folder.read)
        self.format = catalog.format
        recorded = await history.read(conn)
        adoption = None
        if adopt and not recorded.exists:
            adoption = await baseline.find(conn, flyway=catalog.format == "flyway")
        self.last_seen = history.states(catalog.migrations, recorded, adoption)
        return catalog, self.last_seen

    async def status(self) -> list[VersionState]:
        """Every version and repeatable script, with its state."""
        async with self._writer() as (_, conn):
            return (await self._read(conn))[1]

    async def plan(self, target: Version | None) -> list[Step]:
        """The steps that would run, without running anything."""
        async with self._writer() as (_, conn):
            _, versions = await self._read(conn)
        return await asyncio.to_thread(plan, versions, target)

    async def apply(
        self, target: Version | None, *, dry_run: bool, actor: str
    ) -> list[dict[str, Any]]:
        """Apply pending versions up to `target` (then new or changed repeatable scripts);
        refuse when applied files drifted."""
        return await self._run(target, dry_run=dry_run, actor=actor, direction="up")

    async def rollback(self, target: Version, *, dry_run: bool, actor: str) -> list[dict[str, Any]]:
        """Run down files until `target` is the current version."""
        return await self._run(target, dry_run=dry_run, actor=actor, direction="down")

    async def baseline(self, *, actor: str) -> list[dict[str, Any]]:
        """Record as applied, without running them, the versions another tool's history
        table says it applied (whether or not mirrorpool's own history exists yet)."""
        async with self._writer(locked=True) as (_, conn):
            catalog = await asyncio.to_thread(self.folder.read)
            recorded = await history.read(conn)
            adoption = await baseline.find(conn, flyway=catalog.format == "flyway")
            versions = history.states(catalog.migrations, recorded, adoption)
            steps = [
                Step(v.version, v.name, "baseline", v.migration.up, source=v.source)
                for v in versions
                if v.state is State.BASELINE and v.migration
            ]
            await history.prepare(conn)
            done = await self._adopt(conn, steps, actor)
            self.last_seen = history.states(catalog.migrations, await history.read(conn))
            return done

    async def _run(
        self, target: Version | None, *, dry_run: bool, actor: str, direction: str
    ) -> list[dict[str, Any]]:
        async with self._writer(locked=True) as (node, conn):
            catalog, versions = await self._read(conn)
            refuse_drift(versions)
            steps = await asyncio.to_thread(plan, versions, target)
            # apply never rolls back, rollback never applies; both record a baseline first.
            steps = [s for s in steps if s.direction in (direction, "baseline")]
            if dry_run:
                return [s.as_json() | {"status": "planned"} for s in steps]
            await history.prepare(conn)
            adopted = [s for s in steps if s.direction == "baseline"]
            done = await self._adopt(conn, adopted, actor)
            try:
                for step in steps[len(adopted) :]:
                    if not self.folder.unchanged(step.script):
                        raise Conflict(
                            f"{step.script.file} changed after this run read it; nothing of it "
                            "ran: run again"
                        )
                    ms = await self._step(conn, node, step, actor)
                    done.append(step.as_json() | {"status": "done", "execution_ms": ms})
                    logger.info(
                        "migration %s %s by %s in %d ms",
                        step.direction, step.script.file, actor, ms,
                    )  # fmt: skip
            finally:
                with contextlib.suppress(psycopg.Error):
                    recorded = await history.read(conn)
                    self.last_seen = history.states(catalog.migrations, recorded)
            return done

    async def _adopt(
        self, conn: psycopg.AsyncConnection[Any], steps: list[Step], actor: str
    ) -> list[dict[str, Any]]:
        """Record baseline steps as applied, all in one transaction."""
        async with conn.transaction():
            for step in steps:
                who = f"{actor} (baseline from {step.source})"
                await history.record(conn, step.migration, step.script.checksum, who, 0, "applied")
        for step in steps:
            logger.info("migration %s recorded from %s by %s", step.script.file, step.source, actor)
        return [step.as_json() | {"status": "recorded"} for step in steps]

    async def _step(
        self, conn: psycopg.AsyncConnection[Any], node: str, step: Step, actor: str
    ) -> int:
        script = step.script
        statements = runnable(script).statements
        lock_ms = script.lock_timeout_ms or self.settings.lock_timeout_ms
        started = time.perf_counter()
        running: int | None = None  # the statement of the script being run
        try:
            if step.outside is None:
                async with conn.transaction():
                    await conn.execute(
                        sql.SQL(
                            "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}"
                        ).format(
                            sql.Literal(lock_ms), sql.Literal(self.settings.statement_timeout_ms)
                        )
                    )
                    for index, statement in enumerate(statements):
                        running = index
                        await conn.execute(statement.sql)
                    running = None
                    ms = int((time.perf_counter() - started) * 1000)
                    await self._record(conn, step, actor, ms, "applied")
                return ms
            # Outside a transaction: no statement timeout (CONCURRENTLY may take long).
            await conn.execute(
                sql.SQL("SET lock_timeout = {}; SET statement_timeout = 0").format(
                    sql.Literal(lock_ms)
                )
            )
            for index, statement in enumerate(statements):
                running = index
                await conn.execute(statement.sql)
            running = None
        except psycopg.Error as exc:
            ms = int((time.perf_counter() - started) * 1000)
            if step.outside is not None and step.direction == "up" and not conn.closed:
                await self._record(conn, step, actor, ms, "failed")
            if running is None:
                error = database_error(exc, node)
                error.extra.update(file=script.file)
                raise error from None
            raise failure(exc, node, step, statements, running) from None
        ms = int((time.perf_counter() - started) * 1000)
        await self._record(conn, step, actor, ms, "applied")
        return ms

    async def _record(
        self, conn: psycopg.AsyncConnection[Any], step: Step, actor: str, ms: int, status: str
    ) -> None:
        if step.direction == "down":
            await history.forget(conn, step.version, step.name)
            return
        await history.record(conn, step.migration, step.script.checksum, actor, ms, status)

    async def repair(self, version: Version | None, *, actor: str) -> list[dict[str, Any]]:
        """Forget failed entries and missing files, re-record checksums of edited files: for
        one version, or (without `version`) everything that drifted."""
        async with self._writer(locked=True) as (_, conn):
            catalog, versions = await self._read(conn, adopt=False)
            await history.prepare(conn)
            repaired = []
            for v in versions:
                if version is not None and v.version != version:
                    continue
                if v.state is State.FAILED:
                    await history.forget(conn, v.version, v.name)
                    action = "cleared failed entry"
                elif v.state is State.MODIFIED and v.migration and v.version is not None:
                    await history.set_checksum(conn, v.version, v.migration.up.checksum)
                    action = "re-recorded checksum"
                elif v.state is State.MISSING:
                    await history.forget(conn, v.version, v.name)
                    action = "forgot missing file"
                else:
                    continue
                shown = v.as_json()
                repaired.append(
                    {k: shown[k] for k in ("version", "name", "file")} | {"action": action}
                )
            logger.warning(
                "migration repair by %s: %s",
                actor, [f"{r['file'] or r['name']}: {r['action']}" for r in repaired]
                or "nothing to do",
            )  # fmt: skip
            self.last_seen = history.states(catalog.migrations, await history.read(conn))
            return repaired
