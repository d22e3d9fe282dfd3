"""Fourteenth review pass (attacker): pass 13's "facts kept UNKNOWN" attack, by a write key.

Pass 13 stopped read keys from marking a schema change (PostgreSQL refuses them DDL). A write
key's `DROP TABLE IF EXISTS nothing_here_14` needs no privilege at all and succeeds (a
NOTICE): app/sql/engine.py marks the facts UNKNOWN before it and again after it, and each
time the watch needs a fingerprint reading to restore them. Sent in a loop, it keeps them
UNKNOWN nearly all the time, and while they are, every other key's statement that names a
relation is judged to run unseen code: out of the lanes, not a pure read (no mirror, no
retry), its connection reset (DISCARD ALL, its prepared statements made again) after it.
(Were UNKNOWN to close connections instead, as test_pass14_unknown_on_demand.py asks for
own code, the same loop would close every other key's connections.)
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


@pytest.mark.timing
async def test_a_write_keys_empty_drops_keep_no_one_out_of_the_lanes(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(5):  # the victim's read is quick: it joins the lane
        assert (await query(client, "admin", VICTIM, params=[1])).status_code == 200
    stop = asyncio.Event()

    async def flood() -> int:
        sent = 0
        while not stop.is_set():
            r = await query(client, "write", "DROP TABLE IF EXISTS nothing_here_14")
            assert r.status_code == 200, r.text
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
        f"only {in_lane} of 30 quick reads of another key took the lane while a write key "
        f"sent {sent} DROP TABLE IF EXISTS of nothing"
    )
