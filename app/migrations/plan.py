"""Plans: the ordered steps that take the schema to a target version, and their warnings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from app.errors import Conflict, InvalidSQL, NotFound
from app.migrations.files import Migration, Script
from app.migrations.history import State, VersionState, current_version
from app.sql.lexer import code_words

Direction = Literal["up", "down"]

# Statements that lose data, rewrite or lock whole tables, or break running clients.
_WARNINGS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bDROP TABLE\b"), "DROP TABLE deletes a table and its data"),
    (re.compile(r"\bDROP SCHEMA\b"), "DROP SCHEMA deletes a schema and everything in it"),
    (re.compile(r"\bDROP COLUMN\b"), "DROP COLUMN deletes a column and its data"),
    (re.compile(r"\bTRUNCATE\b"), "TRUNCATE deletes every row"),
    (
        re.compile(r"\bALTER COLUMN \S+ (SET DATA )?TYPE\b"),
        "changing a column's type rewrites the table under an exclusive lock",
    ),
    (
        re.compile(r"\bALTER COLUMN \S+ SET NOT NULL\b"),
        "SET NOT NULL scans the whole table under an exclusive lock",
    ),
    (re.compile(r"\bRENAME\b"), "RENAME breaks clients that use the old name"),
    (
        re.compile(r"\bADD (CONSTRAINT \S+ )?(FOREIGN KEY|CHECK)\b(?!.*\bNOT VALID\b)"),
        "a constraint added without NOT VALID scans the table while holding a lock",
    ),
    (re.compile(r"\bVACUUM FULL\b|\bCLUSTER\b"), "rewrites the table under an exclusive lock"),
    (re.compile(r"\bLOCK TABLE\b"), "LOCK TABLE blocks traffic until the transaction ends"),
    (re.compile(r"\bREINDEX\b(?! .*CONCURRENTLY)"), "REINDEX without CONCURRENTLY blocks writes"),
]
_CREATE_INDEX = re.compile(
    r"\bCREATE (UNIQUE )?INDEX (?!CONCURRENTLY)(IF NOT EXISTS )?(\S+ )?ON (ONLY )?(?P<table>\S+)"
)
_CREATE_TABLE = re.compile(r"\bCREATE (UNLOGGED |TEMP |TEMPORARY )?TABLE (IF NOT EXISTS )?(\S+)")


@dataclass(frozen=True)
class Step:
    """Run one script of one version in one direction."""

    version: int
    name: str
    direction: Direction
    script: Script
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The step as the API reports it."""
        return {
            "version": self.version,
            "name": self.name,
            "direction": self.direction,
            "file": self.script.path.name,
            "transaction": self.script.transactional,
            "lock_timeout_ms": self.script.lock_timeout_ms,
            "warnings": self.warnings,
            "sql": self.script.sql,
        }


def warnings_for(script: Script, created_here: set[str]) -> list[str]:
    """Dangerous statements in a script; a plain CREATE INDEX on a table made earlier in the
    plan (or in this file) is harmless and not reported."""
    text = " ".join(code_words(script.sql)).upper()
    found = [message for pattern, message in _WARNINGS if pattern.search(text)]
    created_here.update(m.group(3).strip().lower() for m in _CREATE_TABLE.finditer(text))
    for match in _CREATE_INDEX.finditer(text):
        if match["table"].lower() not in created_here:
            found.append(
                f"CREATE INDEX on {match['table'].lower()} without CONCURRENTLY blocks writes "
                "to the table while it builds (use a no-transaction file with CONCURRENTLY)"
            )
    if not script.transactional and code_words(script.sql).count(";") > 0:
        statements = [s for s in " ".join(code_words(script.sql)).split(";") if s.strip()]
        if len(statements) > 1:
            raise InvalidSQL(
                f"{script.path.name} runs outside a transaction and must hold exactly one "
                f"statement; it holds {len(statements)}"
            )
    return found


def refuse_drift(versions: list[VersionState]) -> None:
    """409 listing the files when an applied migration was edited, removed or failed."""
    drift = [v for v in versions if v.state in (State.MODIFIED, State.MISSING, State.FAILED)]
    if drift:
        listed = ", ".join(f"{v.version} ({v.state})" for v in drift)
        raise Conflict(
            f"migrations differ from what was applied: {listed}; restore the files or "
            "POST /v1/migrations/repair",
            versions=[v.as_json() for v in drift],
        )


def plan(versions: list[VersionState], target: int | None) -> list[Step]:
    """The steps from the current version to `target` (default: the newest file)."""
    by_version = {v.version: v for v in versions}
    latest = max((v.version for v in versions if v.migration), default=None)
    if target is None:
        target = latest if latest is not None else 0
    elif target != 0 and (target not in by_version or by_version[target].migration is None):
        raise NotFound(f"no migration file has version {target}")
    current = current_version(versions) or 0
    created: set[str] = set()
    if target >= current:
        steps = []
        for v in versions:
            if v.state is State.PENDING and v.version <= target and v.migration:
                m = v.migration
                steps.append(Step(m.version, m.name, "up", m.up, warnings_for(m.up, created)))
        return steps
    down = [v for v in reversed(versions) if v.state is State.APPLIED and v.version > target]
    lacking = [v for v in down if not (v.migration and v.migration.down)]
    if lacking:
        raise Conflict(
            "cannot roll back: no down file for version "
            + ", ".join(str(v.version) for v in lacking),
            versions=[v.version for v in lacking],
        )
    return [
        Step(
            v.version, v.name, "down", _down(v.migration), warnings_for(_down(v.migration), created)
        )
        for v in down
    ]


def _down(migration: Migration | None) -> Script:
    assert migration is not None and migration.down is not None
    return migration.down
