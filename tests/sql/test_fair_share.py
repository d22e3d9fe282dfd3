"""One key cannot starve the others: no key holds more than its share of a node's pool
(MIRRORPOOL_KEY_MAX_POOL_SHARE, half by default), and a key at its share waits in a line of
its own while the other keys go straight to the connections left free."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.api.auth import hash_key
from app.devdb import LocalPair
from tests.conftest import serving_ready, settings_for
from tests.waiting import eventually

KEYS = {name: f"{name}-{uuid.uuid4().hex}" for name in ("flood", "other")}


@pytest.fixture
def app_name() -> str:
    return f"mp_share_{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def client(pair: LocalPair, app_name: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(
        pair,
        auth="keys",
        api_keys=[
            {"id": name, "sha256": hash_key(key), "scopes": ["write"]} for name, key in KEYS.items()
        ],
        pool_min_size=4,
        pool_max_size=4,
        pool_timeout=10,
        application_name=app_name,
    )
    async with serving_ready(settings) as (_, c):
        yield c


def sleeping(pair: LocalPair, application_name: str) -> int:
    """Backends of the pool running pg_sleep now, from the harness."""
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND state = 'active' AND query LIKE '%%pg_sleep%%'",
            [application_name],
        ).fetchone()
    assert row is not None
    return int(row[0])


class MostSleeping:
    """The most backends seen running pg_sleep at once, sampled in a thread."""

    def __init__(self, pair: LocalPair, application_name: str) -> None:
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pair, application_name))

    def _run(self, pair: LocalPair, application_name: str) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, sleeping(pair, application_name))
            self._stop.wait(0.02)

    def __enter__(self) -> MostSleeping:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def send(client: httpx.AsyncClient, key: str, path: str, body: dict[str, Any]) -> Any:
    return await client.post(path, json=body, headers={"Authorization": f"Bearer {KEYS[key]}"})


async def select_1(client: httpx.AsyncClient) -> float:
    started = time.monotonic()
    answer = await send(client, "other", "/v1/query", {"sql": "SELECT 1"})
    assert answer.status_code == 200, answer.text
    return time.monotonic() - started


@pytest.mark.timing
async def test_another_keys_select_1_keeps_its_latency_while_one_key_floods_the_pool(
    client: httpx.AsyncClient, pair: LocalPair, app_name: str
) -> None:
    usual = statistics.median([await select_1(client) for _ in range(10)])
    slow = {"sql": "SELECT pg_sleep(0.3)"}
    with MostSleeping(pair, app_name) as sampler:
        flood = [asyncio.ensure_future(send(client, "flood", "/v1/query", slow)) for _ in range(30)]
        await eventually(lambda: sleeping(pair, app_name) >= 2, "the flood to take its share")
        during = [await select_1(client) for _ in range(10)]
        answers = await asyncio.gather(*flood)
    # Waiting behind 28 statements of 0.3 s in the pool's queue would take seconds.
    assert max(during) < 0.5, f"select 1 took {max(during):.3f} s (usually {usual:.4f} s)"
    assert statistics.median(during) < max(10 * usual, 0.05), (during, usual)
    assert [a.status_code for a in answers] == [200] * 30, [a.text for a in answers]
    assert sampler.most == 2, f"the flooding key held {sampler.most} of 4 connections"


async def test_a_key_at_its_share_waits_in_its_own_line(
    client: httpx.AsyncClient, pair: LocalPair, app_name: str
) -> None:
    # Transactions take pool connections of their own (no lane): the flood of eight waits
    # in its line two at a time, and another key's two run at once, beside it.
    slow = {"statements": [{"sql": "SELECT pg_sleep(0.5)"}]}
    started = time.monotonic()
    flood = [
        asyncio.ensure_future(send(client, "flood", "/v1/transaction", slow)) for _ in range(8)
    ]
    await eventually(lambda: sleeping(pair, app_name) >= 2, "the flood to take its share")
    other_started = time.monotonic()
    others = await asyncio.gather(*(send(client, "other", "/v1/transaction", slow) for _ in "ab"))
    other_took = time.monotonic() - other_started
    assert [a.status_code for a in others] == [200, 200], [a.text for a in others]
    assert other_took < 1.2, f"the other key's two statements of 0.5 s took {other_took:.2f} s"
    answers = await asyncio.gather(*flood)
    flood_took = time.monotonic() - started
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    assert flood_took >= 1.9, f"eight statements of 0.5 s, two at a time, took {flood_took:.2f} s"
