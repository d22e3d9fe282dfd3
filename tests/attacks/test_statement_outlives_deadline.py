"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Fifth review pass. Every request runs with the statement_timeout mirrorpool sets for it
(the default, or its own `timeout_ms` up to MIRRORPOOL_MAX_STATEMENT_TIMEOUT_MS), and
mirrorpool's own deadline (the timeout + 1 s) shuts the connection's socket without asking
the server to cancel (app/sql/guard.py shut), counting on the server's timeout to have
fired first. But a request may set the timeout itself: `SET LOCAL statement_timeout = 0`
(or `set_config('statement_timeout', '0', true)`, or any larger value) is judged clean and
allowed to every key, a read key included. Its next statement then runs on the server with no
limit: mirrorpool answers 504, drops the connection, and the pool opens a new one, while
the old backend goes on (PostgreSQL does not notice a closed socket until it writes to it).

Nor does it take a setting: a /v1/transaction's statements each get the whole timeout on the
server (PostgreSQL arms statement_timeout per statement), so eight statements of 0.9 s under
`timeout_ms: 1000` run for 7 s, five after the 504.

So one key can keep any number of backends busy (outside every pool's bound, beyond the
timeout ceiling, holding their locks), as fast as its deadlines pass: another key of the
same login is refused its connections (the role's, or the server's, connection limit)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from psycopg import sql

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import query, transaction

MARKER = "attack5_outlives_deadline"
UNLIMITED = [
    "SET LOCAL statement_timeout = 0",
    "SELECT pg_catalog.set_config('statement_timeout', '0', true)",
]


def running(pair: LocalPair, user: str) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND state = 'active'"
            " AND query LIKE %s AND pid <> pg_backend_pid()",
            [user, f"%{MARKER}%"],
        ).fetchone()
    assert row is not None
    return int(row[0])


def stop_them(pair: LocalPair) -> None:
    with pair.primary.connect() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE %s AND pid <> pg_backend_pid()",
            [f"%{MARKER}%"],
        )


@pytest.mark.parametrize("unlimited", UNLIMITED, ids=["set-local", "set-config"])
async def test_a_read_keys_statement_does_not_outlive_its_deadline_on_the_server(
    client: httpx.AsyncClient, pair: LocalPair, unlimited: str
) -> None:
    try:
        attack = await transaction(
            client, "read", unlimited, f"SELECT pg_sleep(30) AS {MARKER}", timeout_ms=200
        )
        assert attack.status_code in (400, 403, 504), attack.text  # (a refusal is a fix)
        await asyncio.sleep(2.0)  # well past the request's deadline (200 ms + 1 s)
        assert running(pair, SERVICE) == 0, "the statement runs on after its 504"
    finally:
        stop_them(pair)


async def test_a_read_keys_transaction_does_not_outlive_its_deadline_on_the_server(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    try:
        statements = [f"SELECT pg_sleep(0.9) AS {MARKER}"] * 8
        attack = await transaction(client, "read", *statements, timeout_ms=1000)
        assert attack.status_code in (400, 403, 504), attack.text
        await asyncio.sleep(1.0)  # past the request's deadline (1 s + 1 s) and its answer
        assert running(pair, SERVICE) == 0, "the transaction runs on after its 504"
    finally:
        stop_them(pair)


async def test_a_read_key_does_not_take_another_keys_connections(
    client: httpx.AsyncClient, pair: LocalPair, world: dict[str, str]
) -> None:
    # The role's pool holds one connection at most (role_pool_max_size=1): a limit of one
    # connection for the role is all mirrorpool ever needs of it.
    role = world["role"]
    with pair.primary.connect() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 1").format(sql.Identifier(role)))
    try:
        assert (await query(client, "role", "SELECT 1")).status_code == 200
        attack = await transaction(
            client, "role2", UNLIMITED[0], f"SELECT pg_sleep(30) AS {MARKER}", timeout_ms=200
        )
        assert attack.status_code in (400, 403, 504), attack.text
        await asyncio.sleep(0.5)
        victim = await query(client, "role", "SELECT v FROM pub WHERE id = 1")
        assert victim.status_code == 200, victim.text
        assert victim.json()["rows"] == [["public"]]
    finally:
        stop_them(pair)
        with pair.primary.connect() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT -1").format(sql.Identifier(role)))
