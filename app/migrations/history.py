"""The history table, and each version's state from comparing it with the files."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from psycopg import AsyncConnection

from app.migrations.files import Migration

TABLE = "mirrorpool_schema_history"

CREATE_SQL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    version bigint PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL,
    execution_ms integer NOT NULL,
    status text NOT NULL CHECK (status IN ('applied', 'failed'))
)
"""

RECORD_SQL = f"""
INSERT INTO {TABLE} (version, name, checksum, applied_by, execution_ms, status)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (version) DO UPDATE SET
    name = excluded.name, checksum = excluded.checksum, applied_at = now(),
    applied_by = excluded.applied_by, execution_ms = excluded.execution_ms,
    status = excluded.status
"""


class State(StrEnum):
    """Where a version stands."""

    PENDING = "pending"
    APPLIED = "applied"
    MODIFIED = "modified"
    MISSING = "missing"
    FAILED = "failed"


@dataclass(frozen=True)
class Entry:
    """One row of the history table."""

    version: int
    name: str
    checksum: str
    applied_at: datetime
    applied_by: str
    execution_ms: int
    status: str


@dataclass(frozen=True)
class VersionState:
    """A version as files and history together see it."""

    version: int
    name: str
    state: State
    migration: Migration | None
    entry: Entry | None

    def as_json(self) -> dict[str, Any]:
        """The version as the API reports it."""
        entry = self.entry
        return {
            "version": self.version,
            "name": self.name,
            "state": self.state,
            "checksum": self.migration.up.checksum if self.migration else None,
            "recorded_checksum": entry.checksum if entry else None,
            "applied_at": entry.applied_at.isoformat() if entry else None,
            "applied_by": entry.applied_by if entry else None,
            "execution_ms": entry.execution_ms if entry else None,
            "has_down": bool(self.migration and self.migration.down),
        }


async def read(conn: AsyncConnection[Any]) -> dict[int, Entry]:
    """The history rows by version; none when the table does not exist yet."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [TABLE])
    row = await cur.fetchone()
    if not row or not row[0]:
        return {}
    cur = await conn.execute(
        f"SELECT version, name, checksum, applied_at, applied_by, execution_ms, status"
        f" FROM {TABLE} ORDER BY version"
    )
    return {int(r[0]): Entry(int(r[0]), *r[1:]) for r in await cur.fetchall()}


def states(migrations: list[Migration], history: dict[int, Entry]) -> list[VersionState]:
    """Every version known to the files or the history, in order, with its state."""
    files = {m.version: m for m in migrations}
    result = []
    for version in sorted(set(files) | set(history)):
        m, entry = files.get(version), history.get(version)
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
        name = m.name if m else entry.name if entry else ""
        result.append(VersionState(version, name, state, m, entry))
    return result


def current_version(versions: list[VersionState]) -> int | None:
    """The highest version recorded as applied (modified counts: it was applied)."""
    applied = [v.version for v in versions if v.state in (State.APPLIED, State.MODIFIED)]
    return max(applied) if applied else None
