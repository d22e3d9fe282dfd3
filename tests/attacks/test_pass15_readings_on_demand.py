"""Fifteenth review pass (attacker): a write key's harmless statements that "may change the
schema" make every other key's request wait for a fresh catalog reading.

app/sql/engine.py marks the facts UNKNOWN around any statement session.changes_schema()
flags (`DROP TABLE IF EXISTS` of nothing, any DDL, a call of the database's own function),
and app/sql/execution.py mark() sends every statement that names a relation and runs while
they are UNKNOWN to be judged later: its connection goes back only once a catalog reading
begun after it ended is in (app/sql/checkout.py _judge_later, SchemaWatch.facts_since).
Pass 14 took the lanes off this (they go by the facts last known), but a read key's
requests never take the lanes (read-only requests stay out), nor does any transaction: each
of them now waits for the next reading, which a write key keeps asking for:

    write key, two at a time, in a loop:  {"sql": "DROP TABLE IF EXISTS nothing_15"}
    read key:                             {"sql": "SELECT v FROM pub WHERE id = 1"}

Measured on 2 cores: the read key's median goes from about 0.9 ms (the same write key
looping on `UPDATE pub SET v = v WHERE id = 2` instead) to about 8 ms; with
`CREATE TEMP TABLE t15 (a int)` (each one a changed fingerprint, so a full reading, twice)
to about 16 ms, 80 ms at the 90th percentile.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import pytest

from tests.attacks.conftest import query, schema_seen

VICTIM = "SELECT v FROM pub WHERE id = 1"
CONTROL = "UPDATE pub SET v = v WHERE id = 2"
ATTACKS = ["DROP TABLE IF EXISTS nothing_15", "CREATE TEMP TABLE t15 (a int)"]


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"pool_min_size": 4, "pool_max_size": 4}


async def _median_ms_under(client: httpx.AsyncClient, sql: str) -> float:
    """The read key's median over 100 requests while the write key sends `sql` in a loop,
    two at a time (its share of the pool)."""
    done = asyncio.Event()

    async def loop() -> None:
        while not done.is_set():
            r = await query(client, "write", sql)
            assert r.status_code == 200, r.text

    tasks = [asyncio.create_task(loop()) for _ in range(2)]
    try:
        times = []
        for _ in range(100):
            started = time.monotonic()
            r = await query(client, "read", VICTIM)
            assert r.status_code == 200, r.text
            times.append((time.monotonic() - started) * 1000)
    finally:
        done.set()
        await asyncio.gather(*tasks)
    return statistics.median(times)


@pytest.mark.timing
@pytest.mark.parametrize("attack", ATTACKS, ids=["drop-if-exists", "create-temp-table"])
async def test_schema_churn_does_not_slow_other_keys(
    client: httpx.AsyncClient, attack: str
) -> None:
    await schema_seen(client)
    control = await _median_ms_under(client, CONTROL)
    under = await _median_ms_under(client, attack)
    # The hole made the read key wait for catalog readings: 8 ms (drop) and 16 ms (temp
    # table) against 0.9. What is left is the CPU a key's own logins and readings take from
    # the one event loop (each CREATE TEMP TABLE closes its connection), under 5 ms alone
    # on 2 cores and up to 7 ms with the whole suite beside it: a benchmark's matter.
    # A temporary table no longer makes the facts unknown (app/sql/schema_watch.py changed_by):
    # the read key's median under it went from 7-14 ms to 2.5-3.7 ms, against 1.6-2.0 here.
    assert under < 4 * control + 3.0, (
        f"a read key's one-row read took {under:.1f} ms (median) while a write key sent "
        f"{attack!r} in a loop, {control:.1f} ms while it looped on {CONTROL!r} instead"
    )
