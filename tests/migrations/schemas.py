"""A database's schema read from pg_catalog, and migration files run with psql, to compare a
database migrated by mirrorpool with one where the same files ran in order by hand."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.devdb import OWNER, LocalPair

# Each query lists one kind of object of the public schema; mirrorpool's own history tables
# are left out, since only the database mirrorpool migrated has them.
_OURS = "NOT LIKE 'mirrorpool\\_%'"
_CATALOG = {
    "relations": f"""
        SELECT relname, relkind::text, obj_description(oid, 'pg_class') FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relname {_OURS}""",
    "columns": f"""
        SELECT c.relname, rank() OVER (PARTITION BY c.oid ORDER BY a.attnum), a.attname,
               format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity::text,
               pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum)
        FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'public'::regnamespace AND c.relname {_OURS}
          AND a.attnum > 0 AND NOT a.attisdropped""",
    "indexes": f"""
        SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid
        FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
        WHERE c.relnamespace = 'public'::regnamespace AND c.relname {_OURS}""",
    "constraints": f"""
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text {_OURS}""",
    "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'",
    "functions": """
        SELECT proname, pg_get_function_identity_arguments(oid), pg_get_functiondef(oid)
        FROM pg_proc WHERE pronamespace = 'public'::regnamespace""",
    "triggers": """
        SELECT tgname, pg_get_triggerdef(t.oid) FROM pg_trigger AS t
        JOIN pg_class AS c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal""",
    "types": """
        SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)::text
        FROM pg_type AS t JOIN pg_enum AS e ON e.enumtypid = t.oid
        WHERE t.typnamespace = 'public'::regnamespace GROUP BY t.typname""",
}


def schema_of(
    pair: LocalPair, database: str, *, leaving_out: tuple[str, ...] = ()
) -> dict[str, list[tuple[Any, ...]]]:
    """Every table, view, sequence, column, index, constraint, function, trigger and enum of
    the public schema, with definitions and comments, each kind sorted; `leaving_out` tables
    (another tool's history) with their indexes and constraints."""
    schema = {}
    with pair.primary.connect(database) as conn:
        for kind, query in _CATALOG.items():
            rows = conn.execute(query).fetchall()
            kept = [row for row in rows if not str(row[0]).startswith(leaving_out)]
            schema[kind] = sorted(kept, key=repr)
    return schema


def psql(pair: LocalPair, database: str, *scripts: Path | str) -> None:
    """Run scripts (files, or SQL text) in order with psql as the schema's owner, as `psql -f`
    does: each statement committed on its own, stopping at the first error."""
    for script in scripts:
        text = script.read_text() if isinstance(script, Path) else script
        subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-",
             pair.primary.dsn(database, user=OWNER)],
            input=text,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip


def dbmate_section(path: Path, section: str) -> str:
    """The text of a dbmate file's `-- migrate:up` or `-- migrate:down` section."""
    text = path.read_text()
    up, _, down = text.partition("-- migrate:down")
    return up if section == "up" else down.split("\n", 1)[1]


@contextmanager
def another_database(pair: LocalPair) -> Iterator[str]:
    """A second fresh database on the shared pair, for the files run by hand."""
    name = f"db_{uuid.uuid4().hex[:12]}"
    with pair.primary.connect() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with pair.primary.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
