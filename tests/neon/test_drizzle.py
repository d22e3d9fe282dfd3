"""drizzle-orm's neon-http driver, unchanged, against POST /sql."""

from __future__ import annotations

import uuid

from app.devdb import LocalPair
from tests.conftest import as_owner
from tests.neon.conftest import Driver


def test_a_drizzle_table_inserts_selects_and_batches(driver: Driver, pair: LocalPair) -> None:
    table = f"notes_{uuid.uuid4().hex[:12]}"
    as_owner(pair, f"CREATE TABLE {table} (id serial PRIMARY KEY, title text NOT NULL, stars int)")
    result = driver.ok("drizzle", table)
    assert result["inserted"] == [{"id": 1, "title": "first", "stars": 3}]
    assert result["found"] == [{"id": 1, "title": "first", "stars": 3}]
    inserted, updated, listed = result["batch"]
    assert inserted == [{"id": 2}]
    assert updated == [{"id": 1, "title": "first", "stars": 4}]
    assert listed == [{"title": "first", "stars": 4}, {"title": "second", "stars": 5}]
    with pair.primary.connect() as conn:
        rows = conn.execute(f"SELECT id, title, stars FROM {table} ORDER BY id").fetchall()
    assert rows == [(1, "first", 4), (2, "second", 5)]
