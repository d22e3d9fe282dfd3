"""Plans: the ordered steps that take the schema to a target version, and their warnings."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from app.errors import Conflict, MigrationDrift, NotFound
from app.migrations.files import Migration, Script
from app.migrations.history import State, VersionState, current_version
from app.migrations.statements import runnable
from app.migrations.versions import ZERO, Version
from app.sql.tree import option_is_on

Direction = Literal["up", "down", "baseline"]
# A table as a statement names it: (schema, or None when unqualified; name), as PostgreSQL
# reads it (quotes removed, unquoted names folded to lower case).
TableName = tuple[str | None, str]

# Statements that lose data, rewrite or lock whole tables, or break running clients; a file's
# warnings are listed in this order, each once.
DROP_TABLE = "DROP TABLE deletes a table and its data"
DROP_SCHEMA = "DROP SCHEMA deletes a schema and everything in it"
DROP_COLUMN = "DROP COLUMN deletes a column and its data"
TRUNCATE = "TRUNCATE deletes every row"
TYPE_CHANGE = "changing a column's type rewrites the table under an exclusive lock"
SET_NOT_NULL = "SET NOT NULL scans the whole table under an exclusive lock"
RENAME = "RENAME breaks clients that use the old name"
VALIDATED_CONSTRAINT = "a constraint added without NOT VALID scans the table while holding a lock"
REWRITE = "rewrites the table under an exclusive lock"
LOCK_TABLE = "LOCK TABLE blocks traffic until the transaction ends"
REINDEX = "REINDEX without CONCURRENTLY blocks writes"
_ORDER = (
    DROP_TABLE, DROP_SCHEMA, DROP_COLUMN, TRUNCATE, TYPE_CHANGE, SET_NOT_NULL, RENAME,
    VALIDATED_CONSTRAINT, REWRITE, LOCK_TABLE, REINDEX,
)  # fmt: skip
_DROPS = {"OBJECT_TABLE": DROP_TABLE, "OBJECT_SCHEMA": DROP_SCHEMA}
_COLUMN_CHANGES = {
    "AT_DropColumn": DROP_COLUMN,
    "AT_AlterColumnType": TYPE_CHANGE,
    "AT_SetNotNull": SET_NOT_NULL,
}
# Constraints PostgreSQL validates against every existing row when added (unless NOT VALID).
_SCANNING_CONSTRAINTS = frozenset({"CONSTR_FOREIGN", "CONSTR_CHECK"})
# What CREATE TABLE AS makes that a CREATE INDEX can then be built on.
_CREATED_AS = frozenset({"OBJECT_TABLE", "OBJECT_MATVIEW"})
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*")


@dataclass(frozen=True)
class Step:
    """Run one script of one migration in one direction; or, for `baseline`, record a
    migration another tool applied without running it."""

    version: Version | None
    name: str
    direction: Direction
    script: Script
    # Why the script runs outside a transaction (its directive, or its statement); None: inside.
    outside: str | None = None
    warnings: list[str] = field(default_factory=list)
    # For a baseline step: the other tool's history table that says it was applied.
    source: str | None = None

    @property
    def migration(self) -> Migration:
        """The version (or repeatable script) this step records or forgets."""
        return Migration(self.version, self.name, self.script, None)

    def as_json(self) -> dict[str, Any]:
        """The step as the API reports it."""
        return {
            "version": str(self.version) if self.version is not None else None,
            "name": self.name,
            "repeatable": self.version is None,
            "direction": self.direction,
            "file": self.script.file,
            "transaction": self.outside is None,
            "outside_transaction": self.outside,
            "lock_timeout_ms": self.script.lock_timeout_ms,
            "warnings": self.warnings,
            "baseline_from": self.source,
            "sql": self.script.sql,
        }


def warnings_for(script: Script, created_here: set[TableName]) -> list[str]:
    """Dangerous statements in a script, read from PostgreSQL's parse tree of each statement
    (never from words: comments, string literals and function bodies say nothing). A plain
    CREATE INDEX on a table made earlier in the plan (`created_here`, which this adds the
    file's new tables to) or earlier in this file is harmless and not reported.

    InvalidSQL, naming the file and the line, when the script cannot run as it is
    (app/migrations/statements.py)."""
    found: set[str] = set()
    indexes: list[str] = []
    for statement in runnable(script).statements:
        for kind, body, schema in _statements(statement.tree.node, None):
            found.update(_dangers(kind, body))
            if kind == "IndexStmt" and not body.get("concurrent"):
                table = _table(body.get("relation"), schema)
                if table is not None and not _known(table, created_here):
                    message = (
                        f"CREATE INDEX on {_display(table)} without CONCURRENTLY blocks writes "
                        "to the table while it builds (put CREATE INDEX CONCURRENTLY in a file "
                        "of its own)"
                    )
                    if message not in indexes:
                        indexes.append(message)
            created = _created_table(kind, body, schema)
            if created is not None:
                created_here.add(created)
    return [message for message in _ORDER if message in found] + indexes


def _statements(
    node: dict[str, Any], schema: str | None
) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    """A statement as (node type, fields, the schema its unqualified names are created in),
    then, for CREATE SCHEMA, each statement it runs inside the new schema."""
    kind = next(iter(node), "")
    body: dict[str, Any] = node.get(kind) or {}
    yield kind, body, schema
    if kind == "CreateSchemaStmt":
        role = (body.get("authrole") or {}).get("RoleSpec", {}).get("rolename")
        inner = body.get("schemaname") or role
        for element in body.get("schemaElts") or ():
            yield from _statements(element, inner)


def _dangers(kind: str, body: dict[str, Any]) -> set[str]:
    """The warnings one statement earns."""
    if kind == "DropStmt":
        return {_DROPS[body["removeType"]]} if body.get("removeType") in _DROPS else set()
    if kind == "AlterTableStmt":
        # ALTER TYPE's ADD/DROP/ALTER ATTRIBUTE are the same commands on a composite type,
        # which holds no rows.
        return set() if body.get("objtype") == "OBJECT_TYPE" else _table_changes(body)
    if kind == "VacuumStmt":
        full = body.get("is_vacuumcmd") and _option(body.get("options"), "full")
        return {REWRITE} if full else set()
    if kind == "ReindexStmt":
        return set() if _option(body.get("params"), "concurrently") else {REINDEX}
    if kind == "AlterEnumStmt":  # ALTER TYPE ... RENAME VALUE (ADD VALUE has no oldVal)
        return {RENAME} if body.get("oldVal") else set()
    fixed = {
        "TruncateStmt": TRUNCATE,
        "RenameStmt": RENAME,
        "ClusterStmt": REWRITE,
        "LockStmt": LOCK_TABLE,
    }.get(kind)
    return {fixed} if fixed else set()


def _table_changes(body: dict[str, Any]) -> set[str]:
    """The warnings of an ALTER TABLE's subcommands."""
    found: set[str] = set()
    for item in body.get("cmds") or ():
        cmd = item.get("AlterTableCmd") or {}
        subtype = cmd.get("subtype")
        if subtype in _COLUMN_CHANGES:
            found.add(_COLUMN_CHANGES[subtype])
        elif subtype == "AT_AddConstraint":
            constraint = (cmd.get("def") or {}).get("Constraint") or {}
            # NOT VALID (and NOT ENFORCED) set skip_validation: no scan of existing rows.
            if constraint.get("contype") in _SCANNING_CONSTRAINTS and not constraint.get(
                "skip_validation"
            ):
                found.add(VALIDATED_CONSTRAINT)
    return found


def _option(options: list[dict[str, Any]] | None, name: str) -> bool:
    """Whether a parenthesised option (VACUUM (FULL), REINDEX (CONCURRENTLY)) is on."""
    return any(
        option.get("defname") == name and option_is_on(option)
        for option in (item.get("DefElem") or {} for item in options or ())
    )


def _table(relation: dict[str, Any] | None, schema: str | None) -> TableName | None:
    """The table a RangeVar names; `schema` qualifies it inside CREATE SCHEMA."""
    if not relation or not relation.get("relname"):
        return None
    return relation.get("schemaname") or schema, str(relation["relname"])


def _created_table(kind: str, body: dict[str, Any], schema: str | None) -> TableName | None:
    """The table (or materialized view) a statement creates, if it creates one."""
    if kind == "CreateStmt":
        return _table(body.get("relation"), schema)
    if kind == "CreateTableAsStmt" and body.get("objtype") in _CREATED_AS:
        return _table((body.get("into") or {}).get("rel"), schema)
    if kind == "SelectStmt" and body.get("intoClause"):  # SELECT ... INTO new_table
        return _table(body["intoClause"].get("rel"), schema)
    return None


def _known(table: TableName, created: set[TableName]) -> bool:
    """Whether `table` is one created earlier: the same name, in the same schema when both
    name one (an unqualified name is taken to mean the table made under that name, wherever
    the search path put it)."""
    schema, name = table
    return any(
        name == other and (schema is None or other_schema is None or schema == other_schema)
        for other_schema, other in created
    )


def _display(table: TableName) -> str:
    """A table's name as it would be written in SQL (quoted where it has to be)."""
    return ".".join(
        part if _PLAIN_NAME.fullmatch(part) else '"' + part.replace('"', '""') + '"'
        for part in table
        if part is not None
    )


def refuse_drift(versions: list[VersionState]) -> None:
    """MigrationDrift listing them when applied migrations were edited, removed or failed.
    (The API and the CLI each add how to repair: an endpoint, a command.)"""
    drift = [v for v in versions if v.state in (State.MODIFIED, State.MISSING, State.FAILED)]
    if drift:
        listed = ", ".join(f"{v.label} ({v.state})" for v in drift)
        raise MigrationDrift(
            f"migrations differ from what was applied: {listed}; restore the files, or "
            "repair the history",
            versions=[v.as_json() for v in drift],
        )


def plan(versions: list[VersionState], target: Version | None) -> list[Step]:
    """The steps from the current version to `target` (default: the newest file): first
    recording what another tool applied (baseline), then up steps (and, when no version is
    left pending, the repeatable scripts that are new or changed) or down steps."""
    steps = [
        Step(v.version, v.name, "baseline", v.migration.up, source=v.source)
        for v in versions
        if v.state is State.BASELINE and v.migration
    ]
    versioned = {v.version: v for v in versions if v.version is not None}
    latest = max((version for version, v in versioned.items() if v.migration), default=None)
    if target is None:
        target = latest if latest is not None else ZERO
    elif target != ZERO and (target not in versioned or versioned[target].migration is None):
        raise NotFound(f"no migration file has version {target}")
    current = current_version(versions) or ZERO
    created: set[TableName] = set()
    if target >= current:
        pending = [v for v in versioned.values() if v.state is State.PENDING and v.migration]
        for v in pending:
            if v.version is not None and v.version <= target:
                steps.append(_step(v, "up", created))
        if all(v.version is not None and v.version <= target for v in pending):
            steps += [
                _step(v, "up", created)
                for v in versions
                if v.version is None and v.state is State.PENDING and v.migration
            ]
        return steps
    done = (State.APPLIED, State.BASELINE)
    down = [v for version, v in reversed(versioned.items()) if v.state in done and version > target]
    lacking = [v for v in down if not (v.migration and v.migration.down)]
    if lacking:
        raise Conflict(
            "cannot roll back: no down file for version " + ", ".join(v.label for v in lacking),
            versions=[v.label for v in lacking],
        )
    return steps + [_step(v, "down", created) for v in down]


def _step(v: VersionState, direction: Direction, created: set[TableName]) -> Step:
    """The step running one of a migration's scripts, checked and warned about."""
    assert v.migration is not None
    script = v.migration.up if direction == "up" else v.migration.down
    assert script is not None
    return Step(
        v.version,
        v.name,
        direction,
        script,
        runnable(script).outside,
        warnings_for(script, created),
    )
