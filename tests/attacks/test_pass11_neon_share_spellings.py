"""Eleventh review pass (attacker): pass 10's per-key pool share for POST /sql in its other
spellings: a role key's batches and single queries (the role's own pool, its share from
MIRRORPOOL_ROLE_POOL_MAX_SIZE), and the key sent as the connection string's password. Two
slow requests of one key never hold both connections of a pool of two, and another key of
the same role is served meanwhile."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import psycopg
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import KEYS, headers, keys_for
from tests.attacks.test_pass10_neon_share import waiting_on_lock
from tests.conftest import as_owner, serving_ready, settings_for
from tests.waiting import eventually

LOCK = 7_311_042


@pytest.mark.parametrize(
    ("batch", "how"),
    [(True, "bearer"), (False, "bearer"), (True, "connection-string")],
    ids=["batch", "query", "batch-connection-string"],
)
async def test_a_role_keys_neon_requests_keep_to_its_share(
    pair: LocalPair, world: dict[str, str], batch: bool, how: str
) -> None:
    role = world["role"]
    as_owner(pair, f"GRANT EXECUTE ON FUNCTION pg_advisory_xact_lock(bigint) TO {role}")
    values: dict[str, Any] = {
        "auth": "keys",
        "api_keys": keys_for(role),
        "role_passwords": {role: world["password"]},
        "pool_min_size": 1,
        "pool_max_size": 2,
        "role_pool_max_size": 2,
        "key_max_pool_share": 0.5,
        "pool_timeout": 2.0,
        "multiplex": False,
    }
    marker = f"share11_{uuid.uuid4().hex[:10]}"
    blocker = psycopg.connect(pair.primary.dsn(), autocommit=True)
    blocker.execute("SELECT pg_advisory_lock(%s)", [LOCK])
    sql = f"/* {marker} */ SELECT pg_advisory_xact_lock({LOCK})"
    body = {"queries": [{"query": sql}]} if batch else {"query": sql}
    auth = (
        headers("role")
        if how == "bearer"
        else {"Neon-Connection-String": f"postgresql://u:{KEYS['role']}@h/db"}
    )
    try:
        async with serving_ready(settings_for(pair, **values)) as (app, client):
            share = app.state.cluster.writer.share(role)

            async def hog() -> int:
                response = await client.post(
                    "/sql",
                    content=json.dumps(body).encode(),
                    headers={**auth, "Content-Type": "text/plain"},
                )
                return response.status_code

            hogs = [asyncio.ensure_future(hog()) for _ in range(2)]
            await eventually(
                lambda: waiting_on_lock(pair, marker) + share.waiting() >= 2,
                "both requests to be running or in the key's line",
            )
            running = waiting_on_lock(pair, marker)
            other = await client.post(
                "/sql",
                content=b'{"query": "SELECT 1 AS n"}',
                headers={**headers("role2"), "Content-Type": "text/plain"},
            )
            blocker.execute("SELECT pg_advisory_unlock(%s)", [LOCK])
            statuses = await asyncio.gather(*hogs)
            assert other.status_code == 200, other.text
            assert running == 1, "one role key's two requests held both of its pool's connections"
            assert statuses == [200, 200]
    finally:
        blocker.close()
