"""Thirty-eighth review pass: what held (its holes: test_pass38_cleanup_safe_snapshot.py,
test_pass38_unclean_session_waits.py).

Session defaults that the database's own code leaves behind PgBouncer (set_config(...,
false)), against the cleanup after a transaction (app/sql/pgbouncer.py finish), which runs
in implicit transactions that take their characteristics from those defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import beside_one_server_connection, query, transaction

DEFAULTS = (
    " PERFORM pg_catalog.set_config('default_transaction_isolation', 'serializable', false),"
    " pg_catalog.set_config('default_transaction_read_only', 'on', false),"
    " pg_catalog.set_config('default_transaction_deferrable', 'on', false);"
)
SETUP = (
    "CREATE TABLE parent38 (x int)",
    "CREATE TABLE w38 (x int)",
    f"GRANT SELECT, INSERT ON parent38 TO {SERVICE}",
    "CREATE FUNCTION leave38() RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$"
    " BEGIN CREATE TEMP TABLE c38 () INHERITS (public.parent38);"
    f"{DEFAULTS} PERFORM pg_catalog.pg_sleep(0.5); RETURN pg_catalog.pg_backend_pid(); END $$",
    "CREATE FUNCTION read_only38() RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$"
    " BEGIN PERFORM pg_catalog.set_config('default_transaction_read_only', 'on', false);"
    " RETURN pg_catalog.pg_backend_pid(); END $$",
    "CREATE FUNCTION probe38() RETURNS text LANGUAGE sql AS $$SELECT"
    " pg_catalog.current_setting('transaction_isolation') || ' '"
    " || (pg_catalog.to_regclass('pg_temp.c38') IS NOT NULL)::text$$",
)
TEARDOWN = (
    "DROP FUNCTION IF EXISTS leave38()",
    "DROP FUNCTION IF EXISTS read_only38()",
    "DROP FUNCTION IF EXISTS probe38()",
    "DROP TABLE IF EXISTS parent38 CASCADE",
    "DROP TABLE IF EXISTS w38",
)


async def test_a_read_only_default_left_by_code_is_reset_for_the_next_key(
    pair: LocalPair, work_dir: Path
) -> None:
    # The cleanup runs whole in a read-only transaction (DISCARD TEMP and the rest), so the
    # session is reset in place, and the next key's write commits.
    async with beside_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as (_, client):
        a = await query(client, "write", "SELECT read_only38()")
        assert a.status_code == 200, a.text
        b = await transaction(
            client,
            "write",
            "SELECT pg_backend_pid(), current_setting('transaction_read_only')",
            "INSERT INTO parent38 VALUES (2) RETURNING x",
        )
        assert b.status_code == 200, b.text
        first: list[Any] = b.json()["results"][0]["rows"][0]
        assert first == [a.json()["rows"][0][0], "off"], "reset in place, read-write again"
