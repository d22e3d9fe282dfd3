"""Fifteenth review pass (attacker): a statement judged later holds its connection while the
catalog reading that would judge it waits for a connection of the same pool.

app/sql/checkout.py give_back(): a statement that may reach code of the database's own ran
while the facts were UNKNOWN (a write key's harmless `DROP TABLE IF EXISTS`), so before its
connection goes back it waits for a catalog reading (SchemaWatch.facts_since, up to
LATER_WAIT_S = 2 s), and closes the connection when none comes. But the reading
(app/sql/engine.py _ask_catalog) takes a connection of the node's pool, the same pool the
waiting checkouts hold. When every connection of the pool is held by such a statement, the
reading cannot start: each waits the full 2 s and its connection is closed, and while they
wait the facts stay UNKNOWN, so every other request naming a table is held too.

    write key, twice at once (its share of a pool of 4):
        {"statements": [{"sql": "DROP TABLE IF EXISTS nothing_15"},
                        {"sql": "SELECT v FROM pub"}]}
    admin key, meanwhile, twice:
        {"statements": [{"sql": "SELECT v FROM pub"}]}

A 2 ms request of another key takes over 2 s, and its connection is closed (a new login).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.attacks.conftest import headers, schema_seen, transaction
from tests.waiting import eventually

NOTHING = "DROP TABLE IF EXISTS nothing_15"
READ = "SELECT v, pg_backend_pid() FROM pub"


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"pool_min_size": 4, "pool_max_size": 4}


async def _full(client: httpx.AsyncClient) -> bool:
    state = await _primary_pool(client)
    return bool(state["known"] and state["pool"]["pool_size"] == 4)


async def _primary_pool(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/pool/stats", headers=headers("admin"))
    assert r.status_code == 200, r.text
    body = r.json()
    node = next(n for n in body["nodes"] if n["name"] == "primary")
    return {"pool": node["pool"], "known": body["schema_code"]["known"]}


async def _timed(client: httpx.AsyncClient, key: str, *sqls: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = await transaction(client, key, *sqls)
    return r, time.monotonic() - started


async def test_requests_judged_later_do_not_starve_the_reading(
    client: httpx.AsyncClient,
) -> None:
    await schema_seen(client)
    await eventually(lambda: _full(client), "the pool to have its four connections open", 10)
    before, _ = await _timed(client, "admin", READ)
    assert before.status_code == 200, before.text
    attack = [asyncio.create_task(_timed(client, "write", NOTHING, READ)) for _ in range(2)]
    victims = await asyncio.gather(*(_timed(client, "admin", READ) for _ in range(2)))
    written = await asyncio.gather(*attack)
    for r, seconds in [*victims, *written]:
        assert r.status_code == 200, r.text
        assert seconds < 1.0, (
            f"a one-row read took {seconds:.2f} s while the catalog reading waited for a "
            "connection of the pool its waiting judgements hold"
        )
