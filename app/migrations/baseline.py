"""Adopting a database another tool migrated: what its own history table says was applied.

A Flyway folder is read against `flyway_schema_history`; the others against
`schema_migrations`, golang-migrate's (version bigint, dirty boolean: one row, the current
version) or dbmate's (version varchar: a row per applied version). Each is found on the
search path, as the tool itself creates it, and recognised by its columns: a table of the
same name with other columns is the application's own, and says nothing. A table with no
applied version adopts nothing.

mirrorpool records the adopted versions as applied without running them (`migrate baseline`,
or the next apply). Its plans and runs look for the other tool's table only while mirrorpool's
own history does not exist yet, so once it does, a folder's own SQL may create, change or read
tables of those names freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection, sql

from app.errors import Conflict
from app.migrations.files import Migration, flyway_checksum
from app.migrations.versions import Version

FLYWAY_TABLE = "flyway_schema_history"
SCHEMA_MIGRATIONS = "schema_migrations"
_FLYWAY_COLUMNS = frozenset({"installed_rank", "version", "description", "type", "checksum",
                             "success"})  # fmt: skip
# Flyway row types that mark every version up to theirs as applied.
_FLYWAY_BASELINES = frozenset({"BASELINE", "SQL_BASELINE"})

_COLUMNS_SQL = """
SELECT attname FROM pg_attribute
WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped
"""


@dataclass(frozen=True)
class Adoption:
    """What another tool's history table says was applied."""

    tool: str
    table: str
    versions: frozenset[Version] = frozenset()
    # Every version up to this one is applied (golang-migrate's version, a Flyway baseline).
    up_to: Version | None = None
    # Repeatable scripts by description, with the Flyway checksum of their last run.
    repeatables: dict[str, int] = field(default_factory=dict)

    def adopts(self, migration: Migration) -> bool:
        """Whether the tool applied this migration (a repeatable script: in its present form)."""
        if migration.version is None:
            recorded = self.repeatables.get(migration.name)
            return recorded is not None and recorded == flyway_checksum(migration.up.sql)
        return migration.version in self.versions or (
            self.up_to is not None and migration.version <= self.up_to
        )


async def find(conn: AsyncConnection[Any], flyway: bool) -> Adoption | None:
    """The other tool's record of applied versions (Flyway's for a Flyway folder); None when
    there is no such table, or it holds nothing applied."""
    table = FLYWAY_TABLE if flyway else SCHEMA_MIGRATIONS
    cur = await conn.execute(_COLUMNS_SQL, [table])
    columns = {row[0] for row in await cur.fetchall()}
    if flyway and columns >= _FLYWAY_COLUMNS:
        adoption = await _flyway(conn)
    elif not flyway and columns == {"version", "dirty"}:
        adoption = await _golang_migrate(conn)
    elif not flyway and columns == {"version"}:
        adoption = await _dbmate(conn)
    else:
        return None
    if adoption.versions or adoption.up_to is not None or adoption.repeatables:
        return adoption
    return None


async def _flyway(conn: AsyncConnection[Any]) -> Adoption:
    cur = await conn.execute(
        sql.SQL(
            "SELECT version, description, type, checksum, success FROM {} ORDER BY installed_rank"
        ).format(sql.Identifier(FLYWAY_TABLE))
    )
    applied: set[Version] = set()
    up_to: Version | None = None
    repeatables: dict[str, int] = {}
    for version, description, kind, checksum, success in await cur.fetchall():
        if kind == "SCHEMA":  # the schemas Flyway created, not a migration
            continue
        if not success:
            raise Conflict(
                f"{FLYWAY_TABLE} records {version or description!r} as failed; repair it with "
                "Flyway (or delete that row) before mirrorpool adopts the database"
            )
        if version is None:
            repeatables[description] = checksum  # the last run of it wins
            continue
        parsed = _version(version, FLYWAY_TABLE)
        if kind in _FLYWAY_BASELINES:
            up_to = parsed if up_to is None else max(up_to, parsed)
        elif kind.startswith("UNDO") or kind == "DELETE":  # undone, or marked deleted
            applied.discard(parsed)
        else:
            applied.add(parsed)
    return Adoption("Flyway", FLYWAY_TABLE, frozenset(applied), up_to, repeatables)


async def _golang_migrate(conn: AsyncConnection[Any]) -> Adoption:
    cur = await conn.execute(
        sql.SQL("SELECT version, dirty FROM {} ORDER BY version").format(
            sql.Identifier(SCHEMA_MIGRATIONS)
        )
    )
    rows = await cur.fetchall()
    if not rows or rows[-1][0] is None or int(rows[-1][0]) < 0:
        return Adoption("golang-migrate", SCHEMA_MIGRATIONS)
    version, dirty = rows[-1]
    if dirty:
        raise Conflict(
            f"golang-migrate left version {version} dirty in {SCHEMA_MIGRATIONS} (it failed "
            "half-way); fix the schema by hand and clear the flag (`migrate force`) before "
            "mirrorpool adopts the database"
        )
    return Adoption(
        "golang-migrate", SCHEMA_MIGRATIONS, up_to=_version(str(version), SCHEMA_MIGRATIONS)
    )


async def _dbmate(conn: AsyncConnection[Any]) -> Adoption:
    cur = await conn.execute(
        sql.SQL("SELECT version FROM {}").format(sql.Identifier(SCHEMA_MIGRATIONS))
    )
    versions = frozenset(_version(str(row[0]), SCHEMA_MIGRATIONS) for row in await cur.fetchall())
    return Adoption("dbmate", SCHEMA_MIGRATIONS, versions)


def _version(text: str, table: str) -> Version:
    try:
        return Version.parse(text)
    except ValueError:
        raise Conflict(f"{table} holds {text!r}, which is not a version mirrorpool reads") from None
