"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Column type names not built into psycopg are looked up once per node and database and
kept for every key (app/sql/columns.py TypeNames), with `SELECT ... FROM pg_type` on the
request's own connection, after its transaction but before the session is reset. A write
key's temporary view named pg_type shadows pg_catalog.pg_type for relations (the temporary
schema is searched first), so the lookup reads the attacker's names, and every later key's
answers carry them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.attacks.conftest import query, transaction


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}  # every request on the primary's one shared connection


async def test_a_write_key_does_not_name_the_next_keys_column_types(
    client: httpx.AsyncClient,
) -> None:
    attack = await transaction(
        client,
        "write",
        "CREATE TEMP VIEW pg_type AS SELECT oid, typelem, typcategory,"
        " 'spoofed-by-writer'::name AS typname FROM pg_catalog.pg_type",
        # pg_snapshot (OID 5038) is not one of psycopg's built-in types: it is looked up
        "SELECT pg_current_snapshot() AS s",
    )
    assert attack.status_code < 500, attack.text  # (a refusal is a fix)
    victim = await query(client, "admin", "SELECT pg_current_snapshot() AS snap")
    assert victim.status_code == 200, victim.text
    assert victim.json()["columns"][0]["type"] == "pg_snapshot", victim.text
