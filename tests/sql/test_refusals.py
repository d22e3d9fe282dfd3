"""What no request may run through shared sessions: each refused with a 400 before it runs,
and the escapes a read key or a role key would need closed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.api.auth import hash_key
from app.devdb import LocalPair
from tests.conftest import serving_ready, settings_for

KEYS = {name: f"{name}-{uuid.uuid4().hex}" for name in ("read", "write", "role")}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture
def role(pair: LocalPair) -> str:
    """A database role that may read nothing but its own table."""
    name = f"mp_ref_{uuid.uuid4().hex[:8]}"
    with pair.primary.connect() as conn:
        conn.execute(f"CREATE ROLE {name} NOLOGIN")
        conn.execute(f"CREATE TABLE {name}_secret (x int)")
        conn.execute(f"INSERT INTO {name}_secret VALUES (42)")
    return name


@pytest.fixture
async def client(pair: LocalPair, role: str) -> AsyncIterator[httpx.AsyncClient]:
    keys = [
        {"id": "reader", "sha256": hash_key(KEYS["read"]), "scopes": ["read"]},
        {"id": "writer", "sha256": hash_key(KEYS["write"]), "scopes": ["write"]},
        {"id": "limited", "sha256": hash_key(KEYS["role"]), "scopes": ["read"], "role": role},
    ]
    # One pooled connection: every request shares the session an attack would leave behind.
    settings = settings_for(pair, auth="keys", api_keys=keys, pool_max_size=1)
    async with serving_ready(settings) as (_, c):
        yield c


async def query(client: httpx.AsyncClient, key: str, sql: str, **extra: Any) -> httpx.Response:
    return await client.post("/v1/query", json={"sql": sql, **extra}, headers=auth(key))


async def transaction(client: httpx.AsyncClient, key: str, *sqls: str) -> httpx.Response:
    statements = [{"sql": sql} for sql in sqls]
    return await client.post("/v1/transaction", json={"statements": statements}, headers=auth(key))


@pytest.mark.parametrize(
    "sql",
    [
        "PREPARE _mp_0 (int) AS SELECT 1",
        "EXECUTE _mp_0 (1)",
        "DEALLOCATE ALL",
        "DEALLOCATE _mp_0",
        "DISCARD ALL",
        "COPY (SELECT 1) TO STDOUT",
        "COPY pg_class FROM STDIN",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "END",
        "ABORT",
        "START TRANSACTION",
        "PREPARE TRANSACTION 'x'",
    ],
)
async def test_statements_that_would_reach_other_requests_are_refused(
    client: httpx.AsyncClient, sql: str
) -> None:
    alone = await query(client, "write", sql)
    inside = await transaction(client, "write", "SELECT 1", sql)

    assert alone.status_code == 400, alone.text
    assert alone.json()["type"].endswith("invalid-sql")
    assert inside.status_code == 400, inside.text
    assert inside.json()["statement_index"] == 1
    # The service is fine afterwards.
    assert (await query(client, "write", "SELECT 1")).json()["rows"] == [[1]]


async def test_savepoints_still_work_inside_a_transaction(client: httpx.AsyncClient) -> None:
    answer = await transaction(
        client, "write", "SAVEPOINT a", "SELECT 1",
        "ROLLBACK TO SAVEPOINT a", "SAVEPOINT b", "ROLLBACK WORK TO SAVEPOINT b",
        "RELEASE SAVEPOINT a",
    )  # fmt: skip
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    "escape",
    [
        "SET TRANSACTION READ WRITE",
        "SET transaction_read_only = off",
        "SET LOCAL transaction_read_only TO 0",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    ],
)
async def test_a_read_key_cannot_switch_its_transaction_to_read_write(
    client: httpx.AsyncClient, escape: str
) -> None:
    table = f"escape_{uuid.uuid4().hex[:8]}"
    answer = await transaction(client, "read", escape, f"CREATE TABLE {table} (x int)")

    assert answer.status_code == 400, answer.text
    assert answer.json()["statement_index"] == 0
    exists = await query(client, "write", "SELECT to_regclass($1) IS NOT NULL", params=[table])
    assert exists.json()["rows"] == [[False]]


async def test_a_role_key_cannot_end_the_transaction_that_holds_its_role(
    client: httpx.AsyncClient, role: str
) -> None:
    answer = await transaction(client, "role", "COMMIT", f"SELECT x FROM {role}_secret")
    direct = await query(client, "role", f"SELECT x FROM {role}_secret")

    assert answer.status_code == 400
    assert direct.status_code == 403  # permission denied: the role still applies
    whoami = await query(client, "role", "SELECT current_user")
    assert whoami.json()["rows"] == [[role]]
