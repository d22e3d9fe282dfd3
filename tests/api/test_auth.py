"""API keys and scopes: closed by default, each route's rule enforced, PostgreSQL saying no."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.api.auth import hash_key
from app.devdb import OWNER, SERVICE, LocalPair
from app.errors import SettingsError
from app.main import create_app
from app.settings import Settings
from tests.conftest import as_owner, login_role, serving_ready, settings_for
from tests.waiting import eventually

KEYS = {
    name: f"{name}-{uuid.uuid4().hex}" for name in ("read", "write", "migrate", "admin", "role")
}


def key_config(role: str) -> list[dict[str, Any]]:
    return [
        {"id": "reader", "sha256": hash_key(KEYS["read"]), "scopes": ["read"]},
        {"id": "writer", "sha256": hash_key(KEYS["write"]), "scopes": ["write"]},
        {"id": "migrator", "sha256": hash_key(KEYS["migrate"]), "scopes": ["migrate"]},
        {"id": "operator", "sha256": hash_key(KEYS["admin"]), "scopes": ["admin"]},
        {"id": "limited", "sha256": hash_key(KEYS["role"]), "scopes": ["write"], "role": role},
    ]


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture
def login(pair: LocalPair) -> tuple[str, str]:
    """A database login that may read one table and write nothing, and its password."""
    name, password = login_role(pair)
    as_owner(
        pair,
        f"CREATE TABLE {name}_t (id int)",
        f"INSERT INTO {name}_t VALUES (1)",
        f"GRANT SELECT ON {name}_t TO {name}",
        f"CREATE TABLE {name}_secret (x int)",
    )
    return name, password


@pytest.fixture
def role(login: tuple[str, str]) -> str:
    return login[0]


def keyed(pair: LocalPair, login: tuple[str, str], **overrides: Any) -> Settings:
    role, password = login
    return settings_for(
        pair,
        auth="keys",
        api_keys=key_config(role),
        role_passwords={role: password},
        **overrides,
    )


@pytest.fixture
async def client(pair: LocalPair, login: tuple[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with serving_ready(keyed(pair, login, max_inflight_per_key=2)) as (_, c):
        yield c


async def q(client: httpx.AsyncClient, key: str, sql: str, **extra: Any) -> httpx.Response:
    return await client.post("/v1/query", json={"sql": sql, **extra}, headers=auth(key))


async def test_no_key_or_a_wrong_key_is_401(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}):
        for method, path in (("POST", "/v1/query"), ("GET", "/v1/migrations"),
                             ("POST", "/v1/transaction"), ("GET", "/pool/stats")):  # fmt: skip
            response = await client.request(method, path, json={"sql": "SELECT 1"}, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"] == "Bearer"


async def test_open_routes_need_no_key(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/health/live", "/health/ready", "/docs", "/openapi.json"):
        assert (await client.get(path)).status_code == 200, path
    spec = (await client.get("/openapi.json")).json()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


@pytest.mark.parametrize(
    ("key", "method", "path", "body", "allowed"),
    [
        ("read", "POST", "/v1/query", {"sql": "SELECT 1"}, True),
        ("migrate", "POST", "/v1/query", {"sql": "SELECT 1"}, False),
        ("admin", "POST", "/v1/query", {"sql": "SELECT 1"}, False),
        ("write", "POST", "/v1/transaction", {"statements": [{"sql": "SELECT 1"}]}, True),
        ("migrate", "POST", "/v1/transaction", {"statements": [{"sql": "SELECT 1"}]}, False),
        ("write", "GET", "/v1/queries", None, True),
        ("migrate", "GET", "/v1/queries", None, False),
        ("migrate", "GET", "/v1/migrations", None, True),
        ("write", "GET", "/v1/migrations", None, False),
        ("migrate", "POST", "/v1/migrations/repair", {}, False),
        ("admin", "POST", "/v1/migrations/repair", {}, True),
        ("write", "POST", "/v1/admin/unfence", {"node": "mirror"}, False),
        ("admin", "POST", "/v1/admin/unfence", {"node": "mirror"}, True),
        ("write", "GET", "/pool/stats", None, False),
        ("admin", "GET", "/pool/stats", None, True),
        ("read", "POST", "/v1/query/stream", {"sql": "SELECT 1"}, True),
        ("admin", "POST", "/v1/query/stream", {"sql": "SELECT 1"}, False),
        ("write", "GET", "/v1/migrations/plan", None, False),
        ("migrate", "GET", "/v1/migrations/plan", None, True),
        ("write", "POST", "/v1/migrations/apply", {}, False),
        ("migrate", "POST", "/v1/migrations/apply", {}, True),
        ("write", "POST", "/v1/migrations/baseline", None, False),
        ("migrate", "POST", "/v1/migrations/baseline", None, True),
        ("read", "POST", "/v1/migrations/rollback", {"target": 0}, False),
        ("migrate", "POST", "/v1/migrations/rollback", {"target": 0}, True),
        ("write", "POST", "/v1/admin/promote", {"node": "primary"}, False),
        ("admin", "POST", "/v1/admin/promote", {"node": "primary"}, True),
        ("migrate", "POST", "/v1/queries/nothing", {}, False),
        ("read", "POST", "/v1/queries/nothing", {}, True),
        ("read", "GET", "/metrics", None, True),
    ],
)
async def test_each_route_needs_its_scope(
    client: httpx.AsyncClient, key: str, method: str, path: str, body: Any, allowed: bool
) -> None:
    response = await client.request(method, path, json=body, headers=auth(key))
    if allowed:
        # Past the door: the answer is the route's own (200, or e.g. 409 for promoting the
        # primary, 404 for a named query that does not exist), never 401/403.
        assert response.status_code not in (401, 403), response.text
        assert response.status_code < 500
    else:
        assert response.status_code == 403
        assert "lacks the" in response.json()["detail"]


async def test_a_read_key_is_refused_writes_by_postgresql(
    client: httpx.AsyncClient, role: str
) -> None:
    table = f"{role}_t"
    assert (await q(client, "read", f"SELECT count(*) FROM {table}")).json()["rows"] == [["1"]]
    for sql in (
        f"DELETE FROM {table}",
        f"WITH gone AS (DELETE FROM {table} RETURNING 1) SELECT count(*) FROM gone",
        "CREATE TABLE sneaky (id int)",
        "SELECT nextval('sneaky_seq')",
        f"SELECT set_config('transaction_read_only', 'off', true), (SELECT count(*) FROM {table})",
    ):
        response = await q(client, "read", sql, read_only=False)
        assert response.status_code in (400, 403), (sql, response.text)
        if response.status_code == 403:
            # PostgreSQL's refusal, or mirrorpool's own from the parse tree (nextval, and
            # set_config on the access mode, are refused in a read-only request).
            problem = response.json()
            assert problem.get("sqlstate") in ("25006", "42501") or problem["type"].endswith(
                "forbidden"
            ), sql
    tx = await client.post(
        "/v1/transaction",
        json={"statements": [{"sql": f"DELETE FROM {table}"}]},
        headers={"X-API-Key": KEYS["read"]},
    )
    assert tx.status_code == 403
    assert tx.json()["sqlstate"] == "25006"
    assert (await q(client, "write", f"SELECT count(*) FROM {table}")).json()["rows"] == [["1"]]


async def test_a_role_key_logs_in_as_its_role_and_cannot_leave_it(
    client: httpx.AsyncClient, role: str
) -> None:
    who = await q(client, "role", "SELECT current_user, session_user")
    assert who.json()["rows"] == [[role, role]]
    assert (await q(client, "role", f"SELECT count(*) FROM {role}_t")).status_code == 200
    denied = await q(client, "role", f"INSERT INTO {role}_t VALUES (2)")
    assert denied.status_code == 403
    assert denied.json()["sqlstate"] == "42501"
    for escape in (
        "RESET ROLE",
        "SET ROLE postgres",
        f"SET ROLE {SERVICE}",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT set_config('role', 'postgres', false)",
        "RESET ALL",
        "DISCARD ALL",
    ):
        response = await q(client, "role", escape)
        # PostgreSQL refuses the switch (42501), or there is nothing to go back to.
        assert response.status_code in (200, 400, 403), escape
        if response.status_code == 403:
            assert response.json()["sqlstate"] == "42501", escape
        still = await q(client, "role", "SELECT current_user, session_user")
        assert still.json()["rows"] == [[role, role]], escape
        secret = await q(client, "role", f"SELECT x FROM {role}_secret")
        assert secret.json()["sqlstate"] == "42501", escape


async def test_in_flight_requests_per_key_are_limited(
    pair: LocalPair, login: tuple[str, str]
) -> None:
    async with serving_ready(keyed(pair, login, max_inflight_per_key=2)) as (app, client):
        slow = [asyncio.ensure_future(q(client, "write", "SELECT pg_sleep(1)")) for _ in range(2)]
        inflight = app.state.keyring.inflight
        await eventually(lambda: inflight["writer"] == 2, "two requests of the key in flight")
        third = await q(client, "write", "SELECT 1")
        other_key = await q(client, "read", "SELECT 1")
        finished = [r.status_code for r in await asyncio.gather(*slow)]
    assert finished == [200, 200]
    assert third.status_code == 429
    assert third.headers["retry-after"] == "1"
    assert other_key.status_code == 200


def test_closed_by_default(pair: LocalPair) -> None:
    with pytest.raises(SettingsError, match="no API keys are configured"):
        create_app(settings_for(pair, auth="keys"))
    with pytest.raises(SettingsError, match="binds to loopback only"):
        create_app(settings_for(pair, host="0.0.0.0"))
    create_app(settings_for(pair, host="0.0.0.0", allow_remote_without_auth=True))


async def test_keys_and_passwords_never_leave(
    pair: LocalPair, login: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = keyed(pair, login)
    seen: list[str] = []
    async with serving_ready(settings) as (_, client):
        for key in KEYS:
            for sql in ("SELECT 1", "SELEC broken", "SELECT 1/0", "SELECT pg_sleep(2)"):
                r = await client.post(
                    "/v1/query", json={"sql": sql, "timeout_ms": 100}, headers=auth(key)
                )
                seen.append(r.text + str(r.headers))
        bad = await client.post(
            "/v1/query", json={"sql": "SELECT 1"}, headers={"X-API-Key": "x" + KEYS["admin"]}
        )
        seen.append(bad.text + str(bad.headers))
        for path in ("/pool/stats", "/openapi.json", "/health", "/v1/migrations"):
            r = await client.get(path, headers=auth("admin"))
            seen.append(r.text)
    everything = "\n".join(seen) + caplog.text
    for password in (pair.password, pair.password_of(SERVICE), pair.password_of(OWNER), login[1]):
        assert password not in everything
    assert "401" in everything  # the wrong key was refused...
    for key in KEYS.values():
        assert key not in everything  # ...and no key, right or wrong, was ever echoed
