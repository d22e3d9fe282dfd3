"""Fourteenth review pass (attacker): a read key makes the service close pool connections as
fast as it can send a statement, and every other key waits for their replacements.

app/sql/session.py closes a connection after a statement that may leave what DISCARD ALL
does not undo (Effect.CLOSE): a custom setting in any scope, `SET LOCAL app.x14 = '1'`
(allowed to a read key: it is LOCAL, and refused only when not), or since pass 13 any
reading of a view or a table whose code is the database's own. Each such request costs a
backend's exit and a new connection (fork, authentication, startup options), and the pool's
connections are everyone's: with four such requests in flight, another key's point select
takes some 20 ms instead of 2-3 ms under the same number of clean requests (measured here
side by side). Nothing bounds how often one key may cost the pool a connection.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import pytest

from tests.attacks.conftest import query

VICTIM = "SELECT v FROM pub WHERE id = $1"


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"pool_max_size": 4}


async def victim_median_ms(client: httpx.AsyncClient, flood_sql: str) -> float:
    """Another key's median point-select time while the read key sends `flood_sql`, four at
    a time."""
    stop = asyncio.Event()

    async def flood() -> None:
        while not stop.is_set():
            r = await query(client, "read", flood_sql)
            assert r.status_code == 200, r.text

    flooders = [asyncio.ensure_future(flood()) for _ in range(4)]
    times = []
    try:
        for _ in range(60):
            started = time.monotonic()
            r = await query(client, "admin", VICTIM, params=[1])
            assert r.status_code == 200, r.text
            times.append((time.monotonic() - started) * 1000)
    finally:
        stop.set()
        await asyncio.gather(*flooders)
    return statistics.median(times)


async def test_a_read_key_cannot_make_the_pool_reconnect_for_everyone(
    client: httpx.AsyncClient,
) -> None:
    clean = await victim_median_ms(client, "SELECT v FROM pub WHERE id = 1")
    closing = await victim_median_ms(client, "SET LOCAL app.x14 = '1'")
    assert closing < max(3 * clean, 5.0), (
        f"another key's point select took {closing:.1f} ms (median) while a read key sent "
        f"statements that close their connection, {clean:.1f} ms under as many clean ones"
    )
