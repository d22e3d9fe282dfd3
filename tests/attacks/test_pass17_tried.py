"""Seventeenth review pass (attacker): what was tried and held.

- the lanes' batch clock (`mirrorpool.lane_batch`, set per batch with writes): read by a read
  key after a write key's lane writes, and set by a write key's own session setting (the
  connection is reset before anyone else gets it): another key always reads the '0' every
  connection starts with;
- a read key's POST /sql pure read setting DateStyle / IntervalStyle local to its statement:
  the next key's answer keeps mirrorpool's styles;
- the prepared-name eviction: a key fills every name of the shared connection twice over
  (300 distinct texts, run twice) between two runs of another key's prepared statement: the
  other key gets its own rows, never another text's.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import headers, query, transaction
from tests.conftest import as_owner
from tests.waiting import eventually

LANE_WRITE = "INSERT INTO notes17 VALUES ($1::text)"


@pytest.fixture
def overrides(pair: LocalPair, world: dict[str, str]) -> dict[str, Any]:
    as_owner(pair, "CREATE TABLE IF NOT EXISTS public.notes17 (v text)")
    return {"multiplex_quick_ms": 50, "multiplex_writes": True}


async def neon(client: httpx.AsyncClient, key: str, sql: str) -> httpx.Response:
    return await client.post(
        "/sql",
        content=json.dumps({"query": sql}).encode(),
        headers={**headers(key), "Content-Type": "text/plain;charset=UTF-8"},
    )


async def lane_statements(client: httpx.AsyncClient) -> int:
    stats = (await client.get("/pool/stats", headers=headers("admin"))).json()
    primary = next(n for n in stats["nodes"] if n["name"] == "primary")
    return int(primary["multiplexing"]["statements"])


async def lane_write(client: httpx.AsyncClient) -> None:
    async def in_lane() -> bool:
        before = await lane_statements(client)
        r = await query(client, "write", LANE_WRITE, params=["x17"])
        assert r.status_code == 200, r.text
        return await lane_statements(client) > before

    await eventually(in_lane, "the write to join the lane", timeout=20)


async def clock_seen(client: httpx.AsyncClient) -> str:
    r = await query(client, "read", "SELECT current_setting('mirrorpool.lane_batch') AS c")
    assert r.status_code == 200, r.text
    return str(r.json()["rows"][0][0])


async def test_the_batch_clock_after_lane_writes(client: httpx.AsyncClient) -> None:
    await lane_write(client)
    assert await clock_seen(client) == "0"


async def test_the_batch_clock_set_by_a_write_keys_session(client: httpx.AsyncClient) -> None:
    r = await query(
        client, "write", "SELECT pg_catalog.set_config('mirrorpool.lane_batch', '-1e15', false)"
    )
    assert r.status_code in (200, 400), r.text
    assert await clock_seen(client) == "0"
    await lane_write(client)


STYLES = {
    "datestyle-sql-dmy": "SELECT pg_catalog.set_config('DateStyle', 'SQL, DMY', true) AS s",
    "intervalstyle-sql-standard": (
        "SELECT pg_catalog.set_config('IntervalStyle', 'sql_standard', true) AS s"
    ),
    "datestyle-german-with-a-date": (
        "SELECT pg_catalog.set_config('DateStyle', 'German', true) AS s, now()::date AS d"
    ),
}


@pytest.mark.parametrize("attack", list(STYLES.values()), ids=list(STYLES))
async def test_sql_styles_do_not_reach_the_next_key(client: httpx.AsyncClient, attack: str) -> None:
    styled = "SELECT '2003-04-05'::date::text AS d, '1 day 2:03'::interval::text AS i"
    before = await query(client, "admin", styled)
    assert before.status_code == 200, before.text
    r = await neon(client, "read", attack)
    assert r.status_code in (200, 400), r.text
    for key in ("admin", "write"):
        victim = await query(client, key, styled)
        assert victim.status_code == 200, victim.text
        assert victim.json()["rows"] == before.json()["rows"], victim.text
    sql_victim = await neon(client, "admin", styled)
    assert sql_victim.status_code == 200, sql_victim.text
    expected = [{"d": "2003-04-05", "i": "1 day 02:03:00"}]
    assert sql_victim.json()["rows"] == expected, sql_victim.text


async def test_prepared_names_given_up_do_not_answer_another_key(
    client: httpx.AsyncClient,
) -> None:
    victim = "SELECT v AS victim17 FROM pub WHERE id = $1"
    for _ in range(3):  # prepared by name on its second run
        r = await query(client, "admin", victim, params=[1])
        assert r.status_code == 200 and r.json()["rows"] == [["public"]], r.text
    for _ in range(2):
        for chunk in range(3):
            texts = [f"SELECT {chunk * 100 + i} AS v" for i in range(100)]
            r = await transaction(client, "read", *texts)
            assert r.status_code == 200, r.text
        r = await query(client, "admin", victim, params=[1])
        assert r.status_code == 200 and r.json()["rows"] == [["public"]], r.text
