"""Thirteenth review pass (attacker): what was tried and held, kept so it keeps holding.

- A write in a lane that waits for a row lock past 20 ms is undone there and runs again on a
  connection of its own: it commits exactly once, after the lock is released.
- The lane's local lock_timeout does not reach the next request (another key's SHOW).
- A read key's INSERT never joins a lane (it stays READ ONLY, however often it is sent).
- A read key's query through an operator of the database's own whose function writes is
  refused by READ ONLY (PostgreSQL enforces it; nothing is written).
- Paths spelled next to the fast answers' (/v1/query/, //v1/query, /V1/query, a query
  string) answer no statement without a key.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.devdb import OWNER, SERVICE, LocalPair
from tests.attacks.conftest import headers, query, schema_seen
from tests.conftest import as_owner
from tests.waiting import eventually

BUMP = "UPDATE counter13 SET n = n + 1 WHERE id = 1"


@pytest.fixture
def overrides(pair: LocalPair, world: dict[str, str]) -> dict[str, Any]:
    as_owner(
        pair,
        "CREATE TABLE IF NOT EXISTS public.counter13 (id int PRIMARY KEY, n int)",
        "INSERT INTO public.counter13 VALUES (1, 0) ON CONFLICT DO NOTHING",
        "CREATE TABLE IF NOT EXISTS public.notes13 (v text)",
    )
    # (writes in the lanes, the default, named here: what is tried here is how they hold)
    return {"pool_max_size": 3, "multiplex_quick_ms": 15, "multiplex_writes": True}


async def lane_statements(client: httpx.AsyncClient) -> int:
    stats = (await client.get("/pool/stats", headers=headers("admin"))).json()
    primary = next(n for n in stats["nodes"] if n["name"] == "primary")
    return int(primary["multiplexing"]["statements"])


def counter(pair: LocalPair) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT n FROM counter13 WHERE id = 1").fetchone()
    assert row is not None
    return int(row[0])


async def warm_bump(client: httpx.AsyncClient) -> int:
    """Run BUMP until the lane takes it; how many times it ran."""
    runs = 0

    async def in_lane() -> bool:
        nonlocal runs
        before = await lane_statements(client)
        r = await query(client, "write", BUMP)
        assert r.status_code == 200, r.text
        runs += 1
        return await lane_statements(client) > before

    await eventually(in_lane, "the write to join the lane", timeout=20)
    return runs


async def test_a_lane_write_that_waited_for_a_lock_commits_once(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    start = counter(pair)
    runs = await warm_bump(client)
    holder = pair.primary.connect(user=OWNER)
    try:
        holder.autocommit = False
        holder.execute("SELECT n FROM counter13 WHERE id = 1 FOR UPDATE")
        sent = asyncio.ensure_future(query(client, "write", BUMP))

        def waiting() -> bool:
            with pair.primary.connect() as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE usename = %s AND wait_event_type = 'Lock'",
                    [SERVICE],
                ).fetchone()
            return bool(row and row[0])

        await eventually(waiting, "the write to wait for the row lock on its own connection")
        holder.commit()
    finally:
        holder.close()
    r = await sent
    assert r.status_code == 200, r.text
    assert r.json()["rows_affected"] == 1
    assert counter(pair) == start + runs + 1


async def test_the_lanes_lock_timeout_reaches_no_one(client: httpx.AsyncClient) -> None:
    before = (await query(client, "admin", "SHOW lock_timeout")).json()["rows"]
    await warm_bump(client)
    for _ in range(3):
        assert (await query(client, "write", BUMP)).status_code == 200
        after = (await query(client, "admin", "SHOW lock_timeout")).json()["rows"]
        assert after == before


async def test_a_read_keys_write_never_runs(client: httpx.AsyncClient, pair: LocalPair) -> None:
    for _ in range(6):
        r = await query(client, "read", "INSERT INTO notes13 VALUES ('read key')")
        assert 400 <= r.status_code < 500, r.text
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM notes13 WHERE v = 'read key'").fetchone()
    assert row == (0,)


async def test_a_read_keys_write_through_an_own_operator_is_refused(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.note13(a int, b int) RETURNS bool LANGUAGE sql"
        " AS $$ INSERT INTO public.notes13 VALUES ('operator'); SELECT true $$",
        "DO $$ BEGIN CREATE OPERATOR public.#<># (LEFTARG = int, RIGHTARG = int,"
        " FUNCTION = public.note13); EXCEPTION WHEN duplicate_function THEN NULL; END $$",
    )
    await schema_seen(client)
    r = await query(client, "read", "SELECT 1 #<># 2")
    assert r.status_code == 403, r.text
    assert r.json()["sqlstate"] == "25006"
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM notes13 WHERE v = 'operator'").fetchone()
    assert row == (0,)


@pytest.mark.parametrize(
    "path", ["/v1/query/", "//v1/query", "/V1/query", "/v1/query?x=1", "/v1/./query"]
)
async def test_paths_next_to_the_fast_answers_need_a_key(
    client: httpx.AsyncClient, path: str
) -> None:
    r = await client.post(path, json={"sql": "SELECT 1"})
    assert r.status_code != 200 and "rows" not in r.text, r.text
