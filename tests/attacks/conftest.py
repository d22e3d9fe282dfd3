"""Fixtures for the attacks found in review: the keys of tests/sql/test_trust.py (read,
write, admin and two keys with a low-privilege role), every key sharing one pooled
connection of the service's login (pool_max_size=1), so an attacker's session is exactly
the victim's next."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from psycopg import sql

from app.api.auth import hash_key
from app.devdb import OWNER, SERVICE, LocalPair
from tests.conftest import as_owner, login_role, serving_ready, settings_for
from tests.pgbouncer import LocalPgBouncer
from tests.waiting import eventually, eventually_sync

KEYS = {name: f"{name}-{uuid.uuid4().hex}" for name in ("read", "write", "admin", "role", "role2")}


@pytest.fixture
def world(pair: LocalPair) -> dict[str, str]:
    role, password = login_role(pair, "lowpriv")
    as_owner(
        pair,
        "CREATE TABLE IF NOT EXISTS pub (id int PRIMARY KEY, v text)",
        "INSERT INTO pub VALUES (1, 'public') ON CONFLICT DO NOTHING",
        "CREATE TABLE IF NOT EXISTS secret (x int)",
        "INSERT INTO secret SELECT 42 WHERE NOT EXISTS (SELECT FROM secret)",
        "CREATE SEQUENCE IF NOT EXISTS orders_id_seq",
        f"GRANT SELECT ON pub TO {role}",
    )
    return {"role": role, "password": password}


def keys_for(role: str) -> list[dict[str, Any]]:
    return [
        {"id": "reader", "sha256": hash_key(KEYS["read"]), "scopes": ["read"]},
        {"id": "writer", "sha256": hash_key(KEYS["write"]), "scopes": ["write"]},
        {"id": "admin", "sha256": hash_key(KEYS["admin"]), "scopes": ["write", "admin"]},
        {"id": "limited", "sha256": hash_key(KEYS["role"]), "scopes": ["write"], "role": role},
        {"id": "limited2", "sha256": hash_key(KEYS["role2"]), "scopes": ["read"], "role": role},
    ]


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings a test module may change (pool sizes...)."""
    return {}


@asynccontextmanager
async def attacked(
    pair: LocalPair, role: str, password: str, seen: bool = False, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A service with the keys of keys_for(role), every key sharing one pooled connection,
    `overrides` applied; with `seen`, once it has read the catalog as it is now."""
    values: dict[str, Any] = {
        "auth": "keys",
        "api_keys": keys_for(role),
        "role_passwords": {role: password},
        "pool_min_size": 1,
        "pool_max_size": 1,
        "role_pool_max_size": 1,
        # the attacks' own schema changes are made around the service: read them soon
        "schema_refresh_s": 0.1,
    }
    values.update(overrides)
    async with serving_ready(settings_for(pair, **values)) as (_, c):
        if seen:
            await schema_seen(c)  # (until then every statement counts as code)
        yield c


@asynccontextmanager
async def attacked_on(
    pair: LocalPair, setup: Sequence[str], teardown: Sequence[str], **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """attacked(), with a low-privilege role of its own, once the owner has made `setup` and
    the service has read it; the owner's `teardown` after."""
    role, password = login_role(pair, "lowpriv")
    as_owner(pair, *setup)
    try:
        async with attacked(pair, role, password, seen=True, **overrides) as client:
            yield client
    finally:
        as_owner(pair, *teardown)


@contextmanager
def event_trigger_on(
    pair: LocalPair, name: str, event: str, tags: str, function: str
) -> Iterator[None]:
    """A superuser's event trigger `name` on `event` for the command `tags` (an SQL list of
    texts), running `function()` (the owner's); dropped after."""
    with pair.primary.connect() as conn:
        conn.execute(f"DROP EVENT TRIGGER IF EXISTS {name}")
        conn.execute(
            f"CREATE EVENT TRIGGER {name} ON {event} WHEN TAG IN ({tags})"
            f" EXECUTE FUNCTION {function}()"
        )
    try:
        yield
    finally:
        with pair.primary.connect() as conn:
            conn.execute(f"DROP EVENT TRIGGER IF EXISTS {name}")


def locks_on(pair: LocalPair, lock: int) -> int:
    """Session advisory locks on `lock`, held by any session but the harness's."""
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
            " AND pid <> pg_backend_pid()",
            [lock],
        ).fetchone()
    assert row is not None
    return int(row[0])


def end_sessions_holding(pair: LocalPair, lock: int) -> None:
    """End the sessions (a pooler's server sessions) that hold advisory lock `lock`: what they
    left goes with them."""
    with pair.primary.connect() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND objid = %s AND pid <> pg_backend_pid()",
            [lock],
        )
    eventually_sync(lambda: locks_on(pair, lock) == 0, "the server sessions to end")


@asynccontextmanager
async def behind_one_server_connection(
    pair: LocalPair,
    work_dir: Path,
    setup: Sequence[str],
    teardown: Sequence[str],
    lock: int | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """The attacks' keys on the service's login (the role keys aside) behind a PgBouncer of
    one server connection, which every request shares, with the owner's `setup` made first;
    `teardown` after, and the server sessions holding advisory lock `lock` (if any) ended."""
    async with beside_one_server_connection(pair, work_dir, setup, teardown, lock) as (_, c):
        yield c


@asynccontextmanager
async def beside_one_server_connection(
    pair: LocalPair,
    work_dir: Path,
    setup: Sequence[str],
    teardown: Sequence[str],
    lock: int | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[LocalPgBouncer, httpx.AsyncClient]]:
    """behind_one_server_connection, with the PgBouncer too: for another client of it."""
    async with behind_pgbouncer(pair, work_dir, setup, teardown, lock, **overrides) as (
        b,
        _,
        client,
    ):
        yield b, client


def pgbouncer_settings(pair: LocalPair, dsn: str, role: str) -> dict[str, Any]:
    """The service behind a pooler at `dsn` (PgBouncer mode), the attacks' keys on its login
    (the role keys aside), one pooled connection, the owner migrating."""
    return {
        "primary_dsn": dsn,
        "mirror_dsn": None,
        "pgbouncer": True,
        "migrations_dsn": pair.primary.dsn("postgres", user=OWNER),
        "auth": "keys",
        "api_keys": [k for k in keys_for(role) if "role" not in k],
        "pool_min_size": 1,
        "pool_max_size": 1,
        "health_threshold": 3,
        "schema_refresh_s": 0.1,
    }


@asynccontextmanager
async def behind_pgbouncer(
    pair: LocalPair,
    work_dir: Path,
    setup: Sequence[str],
    teardown: Sequence[str],
    lock: int | None = None,
    server_connections: int = 1,
    **overrides: Any,
) -> AsyncIterator[tuple[LocalPgBouncer, FastAPI, httpx.AsyncClient]]:
    """The attacks' keys on the service's login (the role keys aside) behind a PgBouncer of
    `server_connections`, with the owner's `setup` made first and `teardown` after (and the
    server sessions holding advisory lock `lock` ended); one pooled connection to the
    pooler unless `overrides` say otherwise."""
    role, _ = login_role(pair, "lowpriv")
    folder = work_dir / f"bouncer-{uuid.uuid4().hex[:6]}"
    with LocalPgBouncer(pair, folder, pool_size=server_connections) as b:
        as_owner(pair, *setup)
        values = pgbouncer_settings(pair, b.dsn("postgres", user=SERVICE), role)
        try:
            async with serving_ready(settings_for(pair, **(values | overrides))) as (app, c):
                yield b, app, c
        finally:
            as_owner(pair, *teardown)
            if lock is not None:
                end_sessions_holding(pair, lock)


@pytest.fixture
async def client(
    pair: LocalPair, world: dict[str, str], overrides: dict[str, Any]
) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked(pair, world["role"], world["password"], **overrides) as c:
        yield c


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key]}"}


async def query(client: httpx.AsyncClient, key: str, sql: str, **extra: Any) -> httpx.Response:
    return await client.post("/v1/query", json={"sql": sql, **extra}, headers=headers(key))


async def transaction(
    client: httpx.AsyncClient, key: str, *sqls: str, **extra: Any
) -> httpx.Response:
    body = {"statements": [{"sql": sql} for sql in sqls], **extra}
    return await client.post("/v1/transaction", json=body, headers=headers(key))


def one(sql: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    """A case of a table of attacks: one statement, posted to /v1/query."""
    return "/v1/query", {"sql": sql, **extra}


def several(*sqls: str) -> tuple[str, dict[str, Any]]:
    """A case of a table of attacks: statements in one /v1/transaction."""
    return "/v1/transaction", {"statements": [{"sql": sql} for sql in sqls]}


def advisory_locks(pair: LocalPair) -> int:
    """Advisory locks held by any session of the service's login, from the harness."""
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND a.usename = %s",
            [SERVICE],
        ).fetchone()
    assert row is not None
    return int(row[0])


async def leaves_no_lock(
    client: httpx.AsyncClient, pair: LocalPair, key: str, attack: str, what: str = ""
) -> None:
    """`attack` as `key` succeeds, and once the admin key has had a connection after it, no
    session advisory lock of the service's login is left (the code it reached took one)."""
    assert advisory_locks(pair) == 0
    r = await query(client, key, attack)
    assert r.status_code == 200, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, f"a session lock outlived {what or repr(attack)}: {r.text}"


@pytest.fixture
def restore_login(pair: LocalPair) -> Iterator[None]:
    """Put the shared login's defaults and password back after a test that tried them."""
    yield
    with pair.primary.connect() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(sql.Identifier(SERVICE)))
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(SERVICE), sql.Literal(pair.password_of(SERVICE))
            )
        )


async def schema_seen(client: httpx.AsyncClient) -> None:
    """Wait until the service has read the catalog after the schema changes made so far (as
    the owner, around the service: it reads again every MIRRORPOOL_SCHEMA_REFRESH_S)."""
    made = datetime.now(UTC)

    async def seen() -> bool:
        r = await client.get("/pool/stats", headers=headers("admin"))
        assert r.status_code == 200, r.text
        read_at = r.json()["schema_code"]["read_at"]
        return read_at is not None and datetime.fromisoformat(read_at) > made

    await eventually(seen, "the service to read the catalog after the schema change", 10)


def sleepers(pair: LocalPair) -> int:
    """Backends of the service's login sleeping in the trigger's wait."""
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND wait_event = 'PgSleep'"
            " AND pid <> pg_backend_pid()",
            [SERVICE],
        ).fetchone()
    return int(row[0]) if row else 0


def end_sleepers(pair: LocalPair) -> None:
    """End the backends of the service's login sleeping in a wait (pg_sleep)."""
    with pair.primary.connect() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"
            " AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()",
            [SERVICE],
        )


@dataclass(frozen=True)
class Overlap:
    """Key A's request, and key B's, sent once `watching` finds A's cleanup running."""

    a: httpx.Response
    a_took: float
    b: httpx.Response
    b_took: float

    @property
    def said(self) -> str:
        return (
            f"A {self.a.status_code} after {self.a_took:.2f} s;"
            f" B {self.b.status_code} after {self.b_took:.2f} s"
        )


async def b_while_a_cleans(
    pair: LocalPair,
    client: httpx.AsyncClient,
    a_sql: str,
    watching: str,
    b_sql: str = "SELECT 1",
    timeout_ms: int = 1000,
) -> Overlap:
    """A's write runs; once `watching` (a query of pg_stat_activity, %s for the service's
    login) finds its cleanup running, or A is answered, B's read is sent."""
    watcher = await psycopg.AsyncConnection.connect(pair.primary.dsn(), autocommit=True)
    try:
        started = time.monotonic()
        a_task = asyncio.ensure_future(query(client, "write", a_sql, timeout_ms=timeout_ms))

        async def cleaning() -> bool:
            cur = await watcher.execute(watching, [SERVICE])
            return await cur.fetchone() is not None or a_task.done()

        await eventually(cleaning, "A's cleanup to run", 20, 0.005)
        sent = time.monotonic()
        b = await query(client, "read", b_sql, timeout_ms=1000)
        b_took = time.monotonic() - sent
        a = await a_task
        return Overlap(a, time.monotonic() - started, b, b_took)
    finally:
        await watcher.close()
