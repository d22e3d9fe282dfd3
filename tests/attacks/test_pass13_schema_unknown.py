"""Thirteenth review pass (attacker): a read key keeps the catalog's facts unknown for every
key, with statements that cannot change the schema.

app/sql/engine.py marks the facts of app/sql/schema_code.py UNKNOWN around every statement
session.changes_schema() flags, before it runs and again after, whoever sends it and whether
it ran or not. A read key's `DROP TABLE IF EXISTS nothing` runs in a READ ONLY transaction,
where PostgreSQL refuses it (25006): it changes nothing, yet each one sets the facts unknown
and wakes a full reading of the catalog. Sent in a loop, it keeps them unknown nearly all the
time, and while they are, every other key's statement that names a relation is judged to
run unseen code: it leaves the lanes, is not a pure read (no mirror, no retry) and has its
connection reset (DISCARD ALL, its prepared statements made again) after it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.attacks.conftest import headers, query

VICTIM = "SELECT v FROM pub WHERE id = $1"


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"pool_max_size": 4, "multiplex_quick_ms": 15}


async def lane_statements(client: httpx.AsyncClient) -> int:
    stats = (await client.get("/pool/stats", headers=headers("admin"))).json()
    primary = next(n for n in stats["nodes"] if n["name"] == "primary")
    return int(primary["multiplexing"]["statements"])


async def test_a_read_keys_refused_ddl_keeps_no_one_out_of_the_lanes(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(5):  # the victim's read is quick: it joins the lane
        assert (await query(client, "admin", VICTIM, params=[1])).status_code == 200
    stop = asyncio.Event()

    async def flood() -> int:
        sent = 0
        while not stop.is_set():
            r = await query(client, "read", "DROP TABLE IF EXISTS nothing_here_13")
            assert 400 <= r.status_code < 500, r.text
            sent += 1
        return sent

    flooders = [asyncio.ensure_future(flood()) for _ in range(2)]
    in_lane = 0
    try:
        for _ in range(30):
            before = await lane_statements(client)
            r = await query(client, "admin", VICTIM, params=[1])
            assert r.json()["rows"] == [["public"]], r.text
            in_lane += await lane_statements(client) > before
    finally:
        stop.set()
        sent = sum(await asyncio.gather(*flooders))
    assert in_lane >= 20, (
        f"only {in_lane} of 30 quick reads of another key took the lane while a read key "
        f"sent {sent} refused DROP TABLE IF EXISTS"
    )
