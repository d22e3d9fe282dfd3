"""Thirteenth review pass (attacker): a write in a lane commits after its request was told it
timed out.

As the review found it: a request's deadline was its own guard's ("this request stops
waiting, the batch goes on"). For a read that only wastes the answer. A write in a lane is
not stopped once sent, so when it was queued behind its key's earlier statements and then
ran past the request's deadline (its statement timeout plus a second's grace), the client got
57014 "the statement did not finish within ... ms" (the answer mirrorpool gives for a
statement it cancelled), and the write committed after all. A client that retries what timed
out (as 57014 invites) writes twice.

Fixed with writes in the lanes (they are, by default): a write not sent by its deadline is
dropped from the lane; once sent, its request waits for its real outcome, and the server
bounds it: the write runs under what is left of its statement timeout, counted from when the
server began its batch, so the statements ahead of it count too, and one whose time ran out
behind them is not run at all (app/sql/multiplex.py). Whatever a request is told, it is true.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import headers, query
from tests.conftest import as_owner
from tests.waiting import eventually

SLOW = "SELECT pg_sleep($1::float8) AS ahead13"
WRITE = "INSERT INTO notes13 SELECT $1::text FROM pg_sleep($2::float8)"
TIMEOUT_MS = 1000


@pytest.fixture
def overrides(pair: LocalPair, world: dict[str, str]) -> dict[str, Any]:
    as_owner(pair, "CREATE TABLE IF NOT EXISTS public.notes13 (v text)")
    # (multiplex_writes is the default; named so that the test says what it runs against)
    return {
        "statement_timeout_ms": TIMEOUT_MS,
        "multiplex_quick_ms": 15,
        "multiplex_writes": True,
    }


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


def sleeping(pair: LocalPair, like: str = "%ahead13%") -> int:
    """This test's statements running (not another test's sleeps on the shared pair)."""
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND state = 'active'"
            " AND query LIKE %s AND pid <> pg_backend_pid()",
            [SERVICE, like],
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
    await warm(client, WRITE, ["warm", 0])
    before = await lane_statements(client)
    ahead = asyncio.ensure_future(query(client, "write", SLOW, params=[0.9]))
    await eventually(lambda: sleeping(pair) > 0, "the key's slow statement to run")
    # Three writes of 0.8 s queue behind it in the key's lane (the pool has one connection):
    # whatever their order, the second and third cannot end within their statement timeout.
    tags = [f"late-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    started = time.monotonic()
    answers = await asyncio.gather(
        *(query(client, "write", WRITE, params=[tag, 0.8]) for tag in tags)
    )
    elapsed = time.monotonic() - started
    assert (await ahead).status_code == 200
    await eventually(
        lambda: sleeping(pair) + sleeping(pair, "%notes13%") == 0, "the lane's statements to end"
    )
    # They went through the lane (the slow read, and the writes, unless one's time ran out
    # before it could be sent).
    assert await lane_statements(client) - before >= 2
    # Each answer is the truth: a 200 committed once, anything else committed nothing.
    for tag, r in zip(tags, answers, strict=True):
        if r.status_code == 200:
            assert rows_of(pair, tag) == 1, r.text
        else:
            assert rows_of(pair, tag) == 0, f"answered {r.status_code} {r.text}, yet it committed"
            assert r.status_code == 504, r.text
            assert r.json()["sqlstate"] == "57014"
    assert any(r.status_code == 504 for r in answers), [r.text for r in answers]
    # ... and it came within the requests' deadline (1 s + 1 s of grace), with some margin.
    assert elapsed < TIMEOUT_MS / 1000 + 1.5, elapsed


async def test_a_read_keys_write_stays_out_of_the_lane_it_would_join(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    # The write key's text joined the lane; the read key's same text is still refused.
    await warm(client, WRITE, ["warm", 0])
    tag = f"read-{uuid.uuid4().hex[:8]}"
    before = await lane_statements(client)
    answers = await asyncio.gather(
        *(query(client, "read", WRITE, params=[tag, 0]) for _ in range(5))
    )
    assert {r.status_code for r in answers} == {403}, [r.text for r in answers]
    assert {r.json()["sqlstate"] for r in answers} == {"25006"}
    assert await lane_statements(client) == before
    assert rows_of(pair, tag) == 0
