"""Thirteenth review pass (attacker): a write in a lane commits after its request was told it
timed out.

A request's deadline is its own guard's (app/sql/engine.py _multiplexed): "this request stops
waiting, the batch goes on". For a read that only wastes the answer. A write, which now takes
the lanes too, is not stopped once sent (app/sql/multiplex.py), so when it was queued behind
its key's earlier statements in the lane and then runs past the request's deadline (its
statement timeout plus a second's grace), the
client gets 57014 "the statement did not finish within ... ms" (the answer mirrorpool gives
for a statement it cancelled), and the write commits after all. A client that retries what
timed out (as 57014 invites) writes twice; on its own connection the same write would have
been cancelled, and so undone, at the deadline.

Fixed by keeping writes out of the lanes unless MIRRORPOOL_MULTIPLEX_WRITES says otherwise
(the README names the trade-off): with the defaults the writes below run, or wait, on
connections of their own, and one that passes its deadline is cancelled there.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import headers, query
from tests.conftest import as_owner
from tests.waiting import eventually

SLOW = "SELECT pg_sleep($1::float8)"
WRITE = "INSERT INTO notes13 SELECT $1::text FROM pg_sleep($2::float8)"


@pytest.fixture
def overrides(pair: LocalPair, world: dict[str, str]) -> dict[str, Any]:
    as_owner(pair, "CREATE TABLE IF NOT EXISTS public.notes13 (v text)")
    return {"statement_timeout_ms": 1000, "multiplex_quick_ms": 15}


async def lane_statements(client: httpx.AsyncClient) -> int:
    stats = (await client.get("/pool/stats", headers=headers("admin"))).json()
    primary = next(n for n in stats["nodes"] if n["name"] == "primary")
    return int(primary["multiplexing"]["statements"])


async def warm(client: httpx.AsyncClient, sql: str, params: list[Any]) -> None:
    async def in_lane() -> bool:
        before = await lane_statements(client)
        r = await query(client, "write", sql, params=params)
        assert r.status_code == 200, r.text
        return await lane_statements(client) > before

    await eventually(in_lane, "the statement to join the lane", timeout=20)


def sleeping(pair: LocalPair) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND state = 'active'"
            " AND query LIKE '%%pg_sleep%%'",
            [SERVICE],
        ).fetchone()
    return int(row[0]) if row else 0


def rows_of(pair: LocalPair, tag: str) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM notes13 WHERE v = %s", [tag]).fetchone()
    return int(row[0]) if row else 0


async def test_a_write_told_it_timed_out_did_not_commit(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    await warm(client, SLOW, [0])
    for _ in range(3):  # as often as a lane would need to take it
        assert (await query(client, "write", WRITE, params=["warm", 0])).status_code == 200
    ahead = asyncio.ensure_future(query(client, "write", SLOW, params=[0.9]))
    await eventually(lambda: sleeping(pair) > 0, "the key's slow statement to run")
    # Three writes of 0.8 s queue behind it in the key's lane: whatever their order, the
    # second and third end past their deadline (1 s statement timeout + 1 s grace).
    tags = [f"late-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    answers = await asyncio.gather(
        *(query(client, "write", WRITE, params=[tag, 0.8]) for tag in tags)
    )
    assert (await ahead).status_code == 200
    await eventually(lambda: sleeping(pair) == 0, "the lane's statements to end")
    for tag, r in zip(tags, answers, strict=True):
        if r.status_code != 200:
            assert rows_of(pair, tag) == 0, f"answered {r.status_code} {r.text}, yet it committed"
