"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

The lanes take a statement by its text once it ran in under 5 ms (app/sql/multiplex.py
Known.quick), whatever its parameters. A key warms a text whose cost its parameters decide,
then sends it slow: every other key's quick read batched behind it on the same connection
waits for it, although the pool has idle connections (the README promises that statements
that would hold up the ones pipelined behind them stay out of the lanes)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.attacks.conftest import query

VICTIM = "SELECT v FROM pub WHERE id = $1"
SLOW = "SELECT pg_sleep($1::float8)"


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"pool_max_size": 4}  # connections to spare: nobody needs to wait for one


async def timed(client: httpx.AsyncClient) -> float:
    started = time.perf_counter()
    answer = await query(client, "admin", VICTIM, params=[1])
    assert answer.json()["rows"] == [["public"]], answer.text
    return time.perf_counter() - started


@pytest.mark.timing
async def test_a_slow_run_of_a_quick_text_holds_up_no_other_keys_reads(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(5):  # both texts are quick: they join the lane
        await timed(client)
        assert (await query(client, "write", SLOW, params=[0])).status_code == 200
    attacker = asyncio.ensure_future(query(client, "write", SLOW, params=[3]))
    victims = await asyncio.gather(*(timed(client) for _ in range(8)))
    await attacker
    assert max(victims) < 1.0, f"other keys' quick reads waited {max(victims):.1f} s"
