"""Tenth review pass (attacker): a Neon batch is nobody's, so it takes the whole pool.

Every request's checkout is counted against its key's share of the pool
(MIRRORPOOL_KEY_MAX_POOL_SHARE, app/cluster/share.py) through the `key` the engine is given:
/v1/query and /sql's single query pass Limits.key, /v1/transaction passes `key=limits.key`.
POST /sql with `{"queries": [...]}` (app/api/neon.py _run) calls engine.transaction() without
`key=`, so its key is "" and checkout.take() applies no share at all (`share = node.share(role)
if key else None`).

One key sending as many Neon batches as the pool has connections (each one slow: a lock wait,
a pg_sleep) holds every connection, and every other key's requests wait in the pool's queue
until they time out: exactly what the share is for. The safe behaviour asserted: with a pool
of 2 (a share of 1 per key), two batches of the writer key never hold both connections, and
the reader key is served meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import psycopg
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import headers, keys_for
from tests.conftest import serving_ready, settings_for
from tests.waiting import eventually

LOCK = 7_310_042


def waiting_on_lock(pair: LocalPair, marker: str) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE %s AND pid <> pg_backend_pid()",
            [f"%{marker}%"],
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("batch", [True, False], ids=["neon-batch", "neon-query"])
async def test_a_keys_neon_batches_keep_to_its_share(
    pair: LocalPair, world: dict[str, str], batch: bool
) -> None:
    values: dict[str, Any] = {
        "auth": "keys",
        "api_keys": keys_for(world["role"]),
        "role_passwords": {world["role"]: world["password"]},
        "pool_min_size": 2,
        "pool_max_size": 2,
        "key_max_pool_share": 0.5,
        "pool_timeout": 2.0,
        "multiplex": False,
    }
    marker = f"share_{uuid.uuid4().hex[:10]}"
    blocker = psycopg.connect(pair.primary.dsn(), autocommit=True)
    blocker.execute("SELECT pg_advisory_lock(%s)", [LOCK])
    sql = f"/* {marker} */ SELECT pg_advisory_xact_lock({LOCK})"
    body = {"queries": [{"query": sql}]} if batch else {"query": sql}
    try:
        async with serving_ready(settings_for(pair, **values)) as (app, client):
            share = app.state.cluster.writer.share(None)

            async def hog() -> int:
                response = await client.post(
                    "/sql",
                    content=json.dumps(body).encode(),
                    headers={**headers("write"), "Content-Type": "text/plain"},
                )
                return response.status_code

            hogs = [asyncio.ensure_future(hog()) for _ in range(2)]
            # Either both hold a connection (the hole) or one waits in the key's own line.
            await eventually(
                lambda: waiting_on_lock(pair, marker) + share.waiting() >= 2,
                "both batches to be running or in the key's line",
            )
            running = waiting_on_lock(pair, marker)
            other = await client.post(
                "/v1/query", json={"sql": "SELECT 1 AS n"}, headers=headers("read")
            )
            blocker.execute("SELECT pg_advisory_unlock(%s)", [LOCK])
            statuses = await asyncio.gather(*hogs)
            assert other.status_code == 200, other.text
            assert running == 1, "one key's two requests held both of the pool's connections"
            assert statuses == [200, 200]
    finally:
        blocker.close()
