"""Fifteenth review pass (attacker): what was tried and held, kept so it keeps holding.

Each case's id says what it tries; the pool has four connections (a key's share is two), so
a catalog reading finds a connection free while the attacker holds its share.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.attacks.conftest import headers, query, schema_seen, transaction
from tests.waiting import eventually


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"pool_min_size": 4, "pool_max_size": 4}


async def _schema(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/pool/stats", headers=headers("admin"))
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()["schema_code"]
    return found


async def _lane_statements(client: httpx.AsyncClient) -> int:
    r = await client.get("/pool/stats", headers=headers("admin"))
    return sum(int(n["multiplexing"]["statements"]) for n in r.json()["nodes"])


async def neon(client: httpx.AsyncClient, key: str, sql: str) -> httpx.Response:
    return await client.post(
        "/sql",
        content=json.dumps({"query": sql}).encode(),
        headers={**headers(key), "Content-Type": "text/plain;charset=UTF-8"},
    )


async def temp_view_named_like_a_table(client: httpx.AsyncClient) -> None:
    # Other sessions' temporary relations are in the catalog reading (pg_temp_N is a schema
    # of the database's own) and facts go by relation name: a temporary view `pub` whose
    # code is not clean would mark everyone's `pub` as running code. The connection that
    # made it is closed before the reading that follows the change.
    # (counted against what the shared database held before: other tests leave relations
    # whose code is their own in it)
    before = (await _schema(client))["relations_run_code"]
    for _ in range(5):
        r = await query(
            client, "write", "CREATE TEMP VIEW pub AS SELECT 1 AS id, random()::text AS v"
        )
        assert r.status_code == 200, r.text
        await schema_seen(client)
        assert (await _schema(client))["relations_run_code"] == before
    r = await query(client, "admin", "SELECT v FROM pub WHERE id = 1")
    assert r.json()["rows"] == [["public"]], r.text


async def share_lock_does_not_hold_the_reading(client: httpx.AsyncClient) -> None:
    # Locks weaker than ACCESS EXCLUSIVE do not block pg_get_*: a reading during them ends.
    held = asyncio.create_task(
        transaction(client, "write", "LOCK TABLE pub IN EXCLUSIVE MODE", "SELECT pg_sleep(1.5)")
    )
    try:

        async def locked() -> bool:
            r = await query(
                client,
                "admin",
                "SELECT count(*) AS n FROM pg_locks"
                " WHERE mode = 'ExclusiveLock' AND relation = 'pub'::regclass",
            )
            return bool(r.json()["rows"][0][0] == "1")

        await eventually(locked, "the write key to hold pub in EXCLUSIVE mode", 5)
        started = time.monotonic()
        r = await query(client, "write", "DROP TABLE IF EXISTS nothing_15")
        assert r.status_code == 200, r.text

        async def known() -> bool:
            return bool((await _schema(client))["known"])

        await eventually(known, "the facts to be known again under the lock", 5)
        assert time.monotonic() - started < 1.2
    finally:
        assert (await held).status_code == 200


async def lane_batch_clock_reads_zero(client: httpx.AsyncClient) -> None:
    # The lanes' batch clock is put back after each batch: no key learns when another's
    # batch ran.
    for _ in range(6):
        r = await query(client, "write", "UPDATE pub SET v = v WHERE id = $1", params=[1])
        assert r.status_code == 200, r.text
    assert await _lane_statements(client) > 0
    for key in ("read", "admin", "write"):
        r = await query(client, key, "SELECT current_setting('mirrorpool.lane_batch') AS c")
        assert r.json()["rows"] == [["0"]], r.text


async def lane_batch_clock_not_settable(client: httpx.AsyncClient) -> None:
    # Setting the clock (a custom setting) closes the connection: another key's lane write
    # is never judged out of time by it.
    r = await query(
        client, "write", "SELECT set_config('mirrorpool.lane_batch', '1e18', false) AS s"
    )
    assert r.status_code in (200, 400), r.text
    for _ in range(6):
        w = await query(client, "admin", "UPDATE pub SET v = v WHERE id = $1", params=[1])
        assert w.status_code == 200, w.text
    assert await _lane_statements(client) > 0
    c = await query(client, "admin", "SELECT current_setting('mirrorpool.lane_batch') AS c")
    assert c.json()["rows"] == [["0"]], c.text


async def sql_styles_do_not_reach_v1(client: httpx.AsyncClient) -> None:
    # A text prepared under /sql's styles is not the one /v1/query runs (names apart).
    text = "SELECT '1 day 2 hours'::interval AS i"
    for _ in range(3):
        styled = await neon(client, "read", text)
        assert styled.json()["rows"] == [{"i": "1 day 02:00:00"}], styled.text
    for _ in range(3):
        plain = await query(client, "admin", text)
        assert plain.json()["rows"] == [["P1DT2H"]], plain.text
    again = await neon(client, "write", text)
    assert again.json()["rows"] == [{"i": "1 day 02:00:00"}], again.text


async def range_type_refused(client: httpx.AsyncClient) -> None:
    r = await query(client, "write", "CREATE TYPE pg_temp.r15 AS RANGE (subtype = int4)")
    assert r.status_code == 400, r.text


async def read_key_temp_table_refused(client: httpx.AsyncClient) -> None:
    r = await transaction(client, "read", "CREATE TEMP TABLE t15 (a int)", "SELECT 1")
    assert r.status_code == 403, r.text


async def lone_drop_does_not_delay_others(client: httpx.AsyncClient) -> None:
    # With a connection free, a statement judged later waits for a reading of milliseconds.
    for _ in range(3):
        r = await query(client, "write", "DROP TABLE IF EXISTS nothing_15")
        assert r.status_code == 200, r.text
        started = time.monotonic()
        v = await transaction(client, "admin", "SELECT v FROM pub WHERE id = 1")
        assert v.status_code == 200, v.text
        assert time.monotonic() - started < 1.0


CASES: dict[str, Callable[[httpx.AsyncClient], Awaitable[None]]] = {
    "temp-view-named-like-a-table-marks-nothing": temp_view_named_like_a_table,
    "exclusive-lock-does-not-hold-the-reading": share_lock_does_not_hold_the_reading,
    "lane-batch-clock-reads-zero-to-every-key": lane_batch_clock_reads_zero,
    "lane-batch-clock-set-by-a-key-reaches-no-one": lane_batch_clock_not_settable,
    "sql-styles-prepared-apart-from-v1-query": sql_styles_do_not_reach_v1,
    "temp-range-type-refused": range_type_refused,
    "read-key-temp-table-refused": read_key_temp_table_refused,
    "lone-drop-if-exists-delays-no-other-key": lone_drop_does_not_delay_others,
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
async def test_tried_and_held(client: httpx.AsyncClient, case: str) -> None:
    await schema_seen(client)
    await CASES[case](client)
