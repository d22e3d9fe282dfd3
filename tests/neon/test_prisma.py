"""Prisma's client over its Neon HTTP adapter (PrismaNeonHttp), unchanged, against POST /sql."""

from __future__ import annotations

from app.devdb import LocalPair
from tests.conftest import as_owner
from tests.neon.conftest import Driver


def test_prisma_creates_finds_updates_and_counts(driver: Driver, pair: LocalPair) -> None:
    # The table of prisma/schema.prisma's model, made as a migration would.
    as_owner(
        pair,
        "DROP TABLE IF EXISTS prisma_notes",
        "CREATE TABLE prisma_notes (id serial PRIMARY KEY, title text NOT NULL UNIQUE, stars int)",
    )
    result = driver.ok("prisma")
    assert result["created"] == {"id": 1, "title": "first", "stars": 3}
    assert result["found"] == [
        {"id": 1, "title": "first", "stars": 3},
        {"id": 3, "title": "third", "stars": 5},
    ]
    assert result["updated"] == {"id": 2, "title": "second", "stars": 1}
    assert result["counted"] == 3
    # The HTTP adapter hands the driver's error on as it is: Prisma reports its SQLSTATE.
    duplicate = result["duplicate"]
    assert (duplicate["name"], duplicate["code"]) == ("PrismaClientKnownRequestError", "23505")
    assert 'unique constraint "prisma_notes_title_key"' in duplicate["message"]
    with pair.primary.connect() as conn:
        rows = conn.execute("SELECT id, title, stars FROM prisma_notes ORDER BY id").fetchall()
    assert rows == [(1, "first", 3), (2, "second", 1), (3, "third", 5)]
