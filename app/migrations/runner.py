"""Running migrations: status, plan, apply, rollback and repair, on the writer only.

Each run holds the migration lock (app/migrations/lock.py) and works on a connection of its
own to the writer, never a pool connection, so no session setting leaks into traffic. With
MIRRORPOOL_MIGRATIONS_DSN both connections go there instead: behind PgBouncer in transaction
mode the writer's DSN leads to the pooler, which does not keep a session advisory lock. A
transactional step runs its file and writes its history row in one transaction, so a failure
leaves nothing behind but the error. A no-transaction step (CREATE INDEX CONCURRENTLY) that
fails is recorded as failed, and further runs are refused until it is repaired. Every DDL
step runs with a lock_timeout, so a blocked ALTER fails fast instead of queueing all traffic
behind its lock request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from app.cluster.cluster import Cluster
from app.errors import DatabaseError, NoWriterError
from app.migrations import history
from app.migrations.files import Migration
from app.migrations.history import State, VersionState
from app.migrations.lock import migration_lock
from app.migrations.plan import Step, plan, refuse_drift
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
        migrations: list[Migration],
        settings: MigrationSettings,
        direct_dsn: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.migrations = migrations
        self.settings = settings
        # MIRRORPOOL_MIGRATIONS_DSN (a secret): runs go there rather than to the writer.
        self.direct_dsn = direct_dsn
        # What the last status, plan or run saw, for /metrics (no query at scrape time).
        self.last_seen: list[VersionState] | None = None

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

    async def status(self) -> list[VersionState]:
        """Every version and its state."""
        async with self._writer() as (_, conn):
            self.last_seen = history.states(self.migrations, await history.read(conn))
            return self.last_seen

    async def plan(self, target: int | None) -> list[Step]:
        """The steps that would run, without running anything."""
        versions = await self.status()
        return plan(versions, target)

    async def apply(self, target: int | None, *, dry_run: bool, actor: str) -> list[dict[str, Any]]:
        """Apply pending versions up to `target`; refuse when applied files drifted."""
        return await self._run(target, dry_run=dry_run, actor=actor, direction="up")

    async def rollback(self, target: int, *, dry_run: bool, actor: str) -> list[dict[str, Any]]:
        """Run down files until `target` is the current version."""
        return await self._run(target, dry_run=dry_run, actor=actor, direction="down")

    async def _run(
        self, target: int | None, *, dry_run: bool, actor: str, direction: str
    ) -> list[dict[str, Any]]:
        async with self._writer(locked=True) as (node, conn):
            await conn.execute(history.CREATE_SQL)
            versions = history.states(self.migrations, await history.read(conn))
            refuse_drift(versions)
            steps = plan(versions, target)
            if direction == "up" and any(s.direction == "down" for s in steps):
                steps = []
            if direction == "down" and any(s.direction == "up" for s in steps):
                steps = []
            if dry_run:
                return [s.as_json() | {"status": "planned"} for s in steps]
            done = []
            for step in steps:
                ms = await self._step(conn, node, step, actor)
                done.append(step.as_json() | {"status": "done", "execution_ms": ms})
                self.last_seen = history.states(self.migrations, await history.read(conn))
                logger.info(
                    "migration %s %d_%s by %s in %d ms",
                    step.direction, step.version, step.name, actor, ms,
                )  # fmt: skip
            return done

    async def _step(
        self, conn: psycopg.AsyncConnection[Any], node: str, step: Step, actor: str
    ) -> int:
        script = step.script
        lock_ms = script.lock_timeout_ms or self.settings.lock_timeout_ms
        started = time.perf_counter()
        try:
            if script.transactional:
                async with conn.transaction():
                    await conn.execute(
                        sql.SQL(
                            "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}"
                        ).format(
                            sql.Literal(lock_ms), sql.Literal(self.settings.statement_timeout_ms)
                        )
                    )
                    await conn.execute(script.sql)
                    ms = int((time.perf_counter() - started) * 1000)
                    await self._record(conn, step, actor, ms, "applied")
                return ms
            # Outside a transaction: no statement timeout (CONCURRENTLY may take long).
            await conn.execute(
                sql.SQL("SET lock_timeout = {}; SET statement_timeout = 0").format(
                    sql.Literal(lock_ms)
                )
            )
            await conn.execute(script.sql)
        except psycopg.Error as exc:
            ms = int((time.perf_counter() - started) * 1000)
            if not script.transactional and step.direction == "up" and not conn.closed:
                await self._record(conn, step, actor, ms, "failed")
            raise self._failed(exc, node, step) from None
        ms = int((time.perf_counter() - started) * 1000)
        await self._record(conn, step, actor, ms, "applied")
        return ms

    async def _record(
        self, conn: psycopg.AsyncConnection[Any], step: Step, actor: str, ms: int, status: str
    ) -> None:
        if step.direction == "down":
            await conn.execute(f"DELETE FROM {history.TABLE} WHERE version = %s", [step.version])
            return
        await conn.execute(
            history.RECORD_SQL, [step.version, step.name, step.script.checksum, actor, ms, status]
        )

    def _failed(self, exc: psycopg.Error, node: str, step: Step) -> Exception:
        error = database_error(exc, node)
        error.extra.update(file=step.script.path.name, version=step.version)
        position = exc.diag.statement_position
        if position is not None:
            line = step.script.sql[: int(position) - 1].count("\n") + 1
            error.extra["line"] = line
        if isinstance(error, DatabaseError):
            error.detail = f"{step.script.path.name}: {error.detail}"
        return error

    async def repair(self, version: int | None, *, actor: str) -> list[dict[str, Any]]:
        """Forget failed entries and re-record checksums of edited files."""
        async with self._writer(locked=True) as (_, conn):
            versions = history.states(self.migrations, await history.read(conn))
            repaired = []
            for v in versions:
                if version is not None and v.version != version:
                    continue
                if v.state is State.FAILED:
                    await conn.execute(
                        f"DELETE FROM {history.TABLE} WHERE version = %s", [v.version]
                    )
                    repaired.append({"version": v.version, "action": "cleared failed entry"})
                elif v.state is State.MODIFIED and v.migration:
                    await conn.execute(
                        f"UPDATE {history.TABLE} SET checksum = %s WHERE version = %s",
                        [v.migration.up.checksum, v.version],
                    )
                    repaired.append({"version": v.version, "action": "re-recorded checksum"})
                elif v.state is State.MISSING:
                    await conn.execute(
                        f"DELETE FROM {history.TABLE} WHERE version = %s", [v.version]
                    )
                    repaired.append({"version": v.version, "action": "forgot missing file"})
            logger.warning("migration repair by %s: %s", actor, repaired or "nothing to do")
            return repaired
