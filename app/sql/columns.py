"""Column descriptions: each result column's name, PostgreSQL type name and type OID."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.postgres import types as builtin_types

# Built-in types have fixed OIDs; name their arrays "<element>[]" as people write them.
_BUILTIN: dict[int, str] = {}
for _info in builtin_types:
    _BUILTIN.setdefault(_info.oid, _info.name)
    if _info.array_oid:
        _BUILTIN.setdefault(_info.array_oid, f"{_info.name}[]")

# Every name schema-qualified: it runs on a request's connection, where a temporary view or
# type the request made (pg_temp is searched first for those) must not answer for pg_type.
_LOOKUP_SQL = """
SELECT t.oid::pg_catalog.int8,
       CASE WHEN t.typcategory = 'A' AND e.oid IS NOT NULL THEN e.typname || '[]'
            ELSE t.typname END,
       t.typnamespace = pg_catalog.pg_my_temp_schema()
       OR pg_catalog.pg_is_other_temp_schema(t.typnamespace)
FROM pg_catalog.pg_type AS t LEFT JOIN pg_catalog.pg_type AS e ON e.oid = t.typelem
WHERE t.oid = ANY($1::pg_catalog.oid[])
"""
# (the last column: a temporary type, which a session makes and drops at will, is named for
# the result at hand but not kept, or each would grow TypeNames._known for good)

# Result shapes kept at most, the columns across them at most, and the widest shape kept: a
# wider result is described anew each time (its types are known: no query), so that 4096
# results of 1,400 long column names (some 2 GiB) cannot be kept.
_MAX_SHAPES = 4096
_MAX_SHAPE_COLUMNS = 32768
_WIDEST_SHAPE = 256
# Type OIDs named at most (a write key can make and drop types forever); then it starts over.
_MAX_KNOWN = 16384


@dataclass(frozen=True, slots=True)
class Field:
    """The two things of a result field that columns() reads."""

    name: str
    type_code: int


@dataclass(frozen=True, slots=True)
class Column:
    """One result column."""

    name: str
    type: str
    type_oid: int

    def as_json(self) -> dict[str, Any]:
        """The column as the API reports it."""
        return {"name": self.name, "type": self.type, "type_oid": self.type_oid}


@dataclass(frozen=True, slots=True)
class TextField:
    """A result column as libpq describes it, for answers in PostgreSQL's text output
    (app/sql/text_output.py): what node-postgres' `FieldDef` holds."""

    name: str
    type_oid: int
    table_oid: int
    column_number: int
    size: int
    modifier: int


def _shape(node: str, result: Any) -> tuple[Any, ...]:
    return (node, *(
        (result.fname(i), result.ftype(i)) for i in range(result.nfields)
    ))  # fmt: skip


class TypeNames:
    """Names of type OIDs: built-ins from psycopg, others looked up once per database."""

    def __init__(self) -> None:
        # User-defined types have per-database OIDs: key the cache by node and database.
        self._known: dict[tuple[str, int], str] = {}
        self._shapes: dict[tuple[Any, ...], list[Column]] = {}
        self._columns = 0  # across the shapes kept

    def known_result(
        self, conn: AsyncConnection[Any], node: str, result: Any
    ) -> list[Column] | None:
        """Describe a libpq result without a query: a shape met before, or one of types
        already known (None when a type needs looking up: of_result() does)."""
        if result is None or not result.nfields:
            return []
        shape = _shape(node, result)
        cached = self._shapes.get(shape)
        if cached is None:
            description = [Field(name.decode(), oid) for name, oid in shape[1:]]
            if not self.knows(conn, node, description):
                return None
            cached = self._remember(shape, self.as_known(conn, node, description))
        return cached

    async def of_result(self, conn: AsyncConnection[Any], node: str, result: Any) -> list[Column]:
        """Describe a libpq result; a shape met before costs a dictionary lookup."""
        if result is None or not result.nfields:
            return []
        shape = _shape(node, result)
        cached = self._shapes.get(shape)
        if cached is None:
            cursor_like = [Field(name.decode(), oid) for name, oid in shape[1:]]
            cached = self._remember(shape, await self.columns(conn, node, cursor_like))
        return cached

    def _remember(self, shape: tuple[Any, ...], columns: list[Column]) -> list[Column]:
        width = len(columns)
        if width > _WIDEST_SHAPE:
            return columns
        if len(self._shapes) >= _MAX_SHAPES or self._columns + width > _MAX_SHAPE_COLUMNS:
            self._shapes.clear()
            self._columns = 0
        self._shapes[shape] = columns
        self._columns += width
        return columns

    async def columns(
        self, conn: AsyncConnection[Any], node: str, description: list[Any] | None
    ) -> list[Column]:
        """Describe a result, querying pg_type for OIDs we have not met on this node."""
        if not description:
            return []
        key = f"{node}/{conn.info.dbname}"
        unknown = self._unknown(key, description)
        if unknown:
            cur = await conn.execute(_LOOKUP_SQL, [sorted(unknown)], prepare=False)
            found = await cur.fetchall()
            if len(self._known) + len(found) > _MAX_KNOWN:
                self._known.clear()
            temporary: dict[tuple[str, int], str] = {}
            for oid, name, temp in found:
                (temporary if temp else self._known)[(key, int(oid))] = str(name)
            if temporary:
                return self._describe(key, description, temporary)
        return self._describe(key, description)

    def knows(self, conn: AsyncConnection[Any], node: str, description: list[Any] | None) -> bool:
        """True when every column's type name is known without a query."""
        return not description or not self._unknown(f"{node}/{conn.info.dbname}", description)

    def as_known(
        self, conn: AsyncConnection[Any], node: str, description: list[Any] | None
    ) -> list[Column]:
        """Describe a result from what is known, types not met yet named "unknown"."""
        return self._describe(f"{node}/{conn.info.dbname}", description or [])

    def _unknown(self, key: str, description: list[Any]) -> set[int]:
        return {
            d.type_code
            for d in description
            if d.type_code not in _BUILTIN and (key, d.type_code) not in self._known
        }

    def _describe(
        self, key: str, description: list[Any], temporary: dict[tuple[str, int], str] | None = None
    ) -> list[Column]:
        known, other = self._known, temporary or {}
        return [
            Column(
                d.name,
                _BUILTIN.get(d.type_code)
                or known.get((key, d.type_code))
                or other.get((key, d.type_code), "unknown"),
                d.type_code,
            )
            for d in description
        ]
