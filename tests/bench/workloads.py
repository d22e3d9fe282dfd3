"""The benchmark's workloads: the same statements for every target."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    """One kind of request: its statements (SQL with $1 taking a row id)."""

    name: str
    statements: tuple[str, ...]
    transaction: bool = False
    # Sent to POST /sql in Neon's protocol, as @neondatabase/serverless does (mirrorpool only).
    neon: bool = False


WORKLOADS = [
    Workload(
        "point_select", ("SELECT id, name, value, created_at FROM bench_items WHERE id = $1",)
    ),
    Workload(
        "point_select_sql",
        ("SELECT id, name, value, created_at FROM bench_items WHERE id = $1",),
        neon=True,
    ),
    Workload(
        "range_100",
        ("SELECT id, name, value FROM bench_items WHERE id >= $1 ORDER BY id LIMIT 100",),
    ),
    Workload("insert", ("INSERT INTO bench_log (item_id, note) VALUES ($1, 'bench')",)),
    Workload(
        "transaction_3",
        (
            "UPDATE bench_items SET value = value + 1 WHERE id = $1",
            "INSERT INTO bench_log (item_id, note) VALUES ($1, 'tx')",
            "SELECT value FROM bench_items WHERE id = $1",
        ),
        transaction=True,
    ),
]

ROWS = 1_000_000

SETUP_SQL = [
    "DROP TABLE IF EXISTS bench_items, bench_log",
    "CREATE TABLE bench_items (id int PRIMARY KEY, name text NOT NULL, value int8 NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now())",
    f"INSERT INTO bench_items (id, name, value) SELECT g, 'item ' || g, g * 10"
    f" FROM generate_series(1, {ROWS}) g",
    "CREATE TABLE bench_log (id bigserial PRIMARY KEY, item_id int NOT NULL, note text,"
    " at timestamptz NOT NULL DEFAULT now())",
    "VACUUM ANALYZE bench_items",
]
