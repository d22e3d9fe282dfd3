"""The history tables, and each migration's state from comparing them with the files.

`mirrorpool_schema_history` holds a row per version (the version as text, one spelling per
version: `3`, `1.1`, `2023.1.2`; tables made before dotted versions had a bigint column, which
`prepare` turns into text). `mirrorpool_repeatable_history` holds a row per repeatable script,
keyed by its description, with the checksum of its last run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from psycopg import AsyncConnection

from app.migrations.baseline import Adoption
from app.migrations.files import Migration
from app.migrations.versions import Version

TABLE = "mirrorpool_schema_history"
REPEATABLE_TABLE = "mirrorpool_repeatable_history"

_COLUMNS = """
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL,
    execution_ms integer NOT NULL,
    status text NOT NULL CHECK (status IN ('applied', 'failed'))
"""
CREATE_SQL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (version text PRIMARY KEY, name text NOT NULL, {_COLUMNS});
CREATE TABLE IF NOT EXISTS {REPEATABLE_TABLE} (name text PRIMARY KEY, {_COLUMNS})
"""
_VERSION_TYPE_SQL = f"""
SELECT format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = '{TABLE}'::regclass AND attname = 'version'
"""
_UPSERT = """
ON CONFLICT ({key}) DO UPDATE SET
    checksum = excluded.checksum, applied_at = now(), applied_by = excluded.applied_by,
    execution_ms = excluded.execution_ms, status = excluded.status
"""
RECORD_SQL = f"""
INSERT INTO {TABLE} (version, name, checksum, applied_by, execution_ms, status)
VALUES (%s, %s, %s, %s, %s, %s) {_UPSERT.format(key="version")}, name = excluded.name
"""
RECORD_REPEATABLE_SQL = f"""
INSERT INTO {REPEATABLE_TABLE} (name, checksum, applied_by, execution_ms, status)
VALUES (%s, %s, %s, %s, %s) {_UPSERT.format(key="name")}
"""


class State(StrEnum):
    """Where a migration stands."""

    PENDING = "pending"
    APPLIED = "applied"
    MODIFIED = "modified"
    MISSING = "missing"
    FAILED = "failed"
    # Applied by another tool (its history table says so); recorded by the next apply.
    BASELINE = "baseline"


@dataclass(frozen=True)
class Entry:
    """One row of a history table (`version` None for a repeatable script's)."""

    version: Version | None
    name: str
    checksum: str
    applied_at: datetime
    applied_by: str
    execution_ms: int
    status: str


@dataclass(frozen=True)
class History:
    """Both history tables: whether they exist yet, and their rows."""

    exists: bool
    versions: dict[Version, Entry] = field(default_factory=dict)
    repeatables: dict[str, Entry] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionState:
    """A version, or a repeatable script (no version), as files and history see it."""

    version: Version | None
    name: str
    state: State
    migration: Migration | None
    entry: Entry | None
    # For BASELINE: the other tool's history table that says it was applied.
    source: str | None = None

    @property
    def label(self) -> str:
        """How messages name it: the version, or the repeatable script's description."""
        return str(self.version) if self.version is not None else f"repeatable {self.name!r}"

    def as_json(self) -> dict[str, Any]:
        """The version as the API reports it."""
        entry = self.entry
        return {
            "version": str(self.version) if self.version is not None else None,
            "name": self.name,
            "repeatable": self.version is None,
            "state": self.state,
            "file": self.migration.up.file if self.migration else None,
            "checksum": self.migration.up.checksum if self.migration else None,
            "recorded_checksum": entry.checksum if entry else None,
            "applied_at": entry.applied_at.isoformat() if entry else None,
            "applied_by": entry.applied_by if entry else None,
            "execution_ms": entry.execution_ms if entry else None,
            "has_down": bool(self.migration and self.migration.down),
            "baseline_from": self.source,
        }


async def prepare(conn: AsyncConnection[Any]) -> None:
    """Create the history tables, or bring an older one up to date (a bigint version)."""
    await conn.execute(CREATE_SQL)
    row = await (await conn.execute(_VERSION_TYPE_SQL)).fetchone()
    if row and row[0] == "bigint":
        await conn.execute(
            f"ALTER TABLE {TABLE} ALTER COLUMN version TYPE text USING version::text"
        )


async def read(conn: AsyncConnection[Any]) -> History:
    """The history rows; none when the tables do not exist yet."""
    cur = await conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL", [TABLE, REPEATABLE_TABLE]
    )
    row = await cur.fetchone()
    if not row or not row[0]:
        return History(exists=False)
    columns = "checksum, applied_at, applied_by, execution_ms, status"
    cur = await conn.execute(f"SELECT version::text, name, {columns} FROM {TABLE}")
    versions = {}
    for r in await cur.fetchall():
        version = Version.parse(r[0])
        versions[version] = Entry(version, *r[1:])
    repeatables = {}
    if row[1]:
        cur = await conn.execute(f"SELECT name, {columns} FROM {REPEATABLE_TABLE}")
        repeatables = {r[0]: Entry(None, *r) for r in await cur.fetchall()}
    return History(True, versions, repeatables)


async def record(
    conn: AsyncConnection[Any],
    migration: Migration,
    checksum: str,
    actor: str,
    ms: int,
    status: str,
) -> None:
    """Record a migration as applied (or failed) with the checksum of what ran."""
    if migration.version is None:
        await conn.execute(RECORD_REPEATABLE_SQL, [migration.name, checksum, actor, ms, status])
        return
    await conn.execute(
        RECORD_SQL, [migration.version.canonical, migration.name, checksum, actor, ms, status]
    )


async def set_checksum(conn: AsyncConnection[Any], version: Version, checksum: str) -> None:
    """Re-record the checksum of an applied version whose file was edited on purpose."""
    await conn.execute(
        f"UPDATE {TABLE} SET checksum = %s WHERE version = %s", [checksum, version.canonical]
    )


async def forget(conn: AsyncConnection[Any], version: Version | None, name: str) -> None:
    """Delete a version's (or a repeatable script's) row."""
    if version is None:
        await conn.execute(f"DELETE FROM {REPEATABLE_TABLE} WHERE name = %s", [name])
        return
    await conn.execute(f"DELETE FROM {TABLE} WHERE version = %s", [version.canonical])


def states(
    migrations: list[Migration], history: History, adoption: Adoption | None = None
) -> list[VersionState]:
    """Every version known to the files or the history, in order, then every repeatable
    script by description, each with its state. With `adoption`, a pending migration that
    the other tool applied is BASELINE."""
    files = {m.version: m for m in migrations if m.version is not None}
    result = []
    for version in sorted(set(files) | set(history.versions)):
        m, entry = files.get(version), history.versions.get(version)
        if entry is None:
            state = State.PENDING
        elif entry.status == "failed":
            state = State.FAILED
        elif m is None:
            state = State.MISSING
        elif m.up.checksum != entry.checksum:
            state = State.MODIFIED
        else:
            state = State.APPLIED
        result.append(_state(version, m, entry, state, adoption))
    scripts = {m.name: m for m in migrations if m.version is None}
    for name in sorted(set(scripts) | set(history.repeatables)):
        m, entry = scripts.get(name), history.repeatables.get(name)
        if entry is not None and entry.status == "failed":
            state = State.FAILED
        elif entry is not None and m is None:
            state = State.MISSING
        elif entry is None or m is None or m.up.checksum != entry.checksum:
            # Never run, or changed since its last run: it runs (again) on the next apply.
            state = State.PENDING
        else:
            state = State.APPLIED
        result.append(_state(None, m, entry, state, adoption, name))
    return result


def _state(
    version: Version | None,
    m: Migration | None,
    entry: Entry | None,
    state: State,
    adoption: Adoption | None,
    name: str = "",
) -> VersionState:
    name = m.name if m else entry.name if entry else name
    if state is State.PENDING and entry is None and m and adoption and adoption.adopts(m):
        return VersionState(version, name, State.BASELINE, m, None, adoption.table)
    return VersionState(version, name, state, m, entry)


def current_version(versions: list[VersionState]) -> Version | None:
    """The highest version applied (modified counts: it was applied; so does one another
    tool applied)."""
    done = (State.APPLIED, State.MODIFIED, State.BASELINE)
    applied = [v.version for v in versions if v.version is not None and v.state in done]
    return max(applied) if applied else None
