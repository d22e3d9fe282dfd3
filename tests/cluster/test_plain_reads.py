"""Plain reads while no node takes writes: what the parser shows to be a pure read is served
by the mirror, read_only or not; anything else gets 503 no-writer at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.devdb import OWNER, LocalPair
from tests.cluster.test_failover import FAILOVER_SETTINGS, Load, Outcome, prepare, steady
from tests.conftest import PairFactory, serving_ready, settings_for
from tests.waiting import eventually

PURE_READS = [
    "SELECT count(*) FROM t",
    'select /* a comment */ "count"(*) from public.t',
    "WITH x AS (SELECT id FROM t) SELECT count(*) FROM x",
    "VALUES (1), (2)",
    "SELECT random(), gen_random_uuid()",
    "TABLE t",
    "SELECT pg_catalog.lower('A'), now(), U&\"lower\"('B')",
    "SELECT count(*) FROM t WHERE id IN (SELECT id FROM t)",
]
NOT_PURE = [
    "SELECT nextval('s')",
    "SELECT \"nextval\"('s')",
    "SELECT pg_catalog.nextval('s')",
    "SELECT id FROM t FOR UPDATE",
    "SELECT id FROM t FOR KEY SHARE",
    "SELECT bump()",
    "SELECT public.bump()",
    "SELECT id INTO t2 FROM t",
    "WITH d AS (DELETE FROM t RETURNING id) SELECT count(*) FROM d",
    "INSERT INTO t (id) VALUES (99)",
    "SELECT ('s'::regclass).nextval",
]


def prepare_more(pair: LocalPair) -> None:
    prepare(pair)
    with pair.primary.connect(user=OWNER) as conn:
        conn.execute("INSERT INTO t (id) SELECT g FROM generate_series(1, 5) g")
        conn.execute("CREATE SEQUENCE s")
        conn.execute(
            "CREATE FUNCTION bump() RETURNS bigint VOLATILE LANGUAGE sql "
            "AS $$ SELECT nextval('s') $$"
        )
    # The mirror has replayed everything before the primary goes away.
    with pair.primary.connect() as conn:
        (lsn,) = conn.execute("SELECT pg_current_wal_lsn()").fetchone() or ("",)
    with pair.mirrors[0].connect() as conn:
        deadline = time.monotonic() + 10
        while True:
            row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]).fetchone()
            if row and row[0]:
                break
            assert time.monotonic() < deadline, "the mirror never replayed the setup"
            conn.execute("SELECT pg_sleep(0.02)")


@pytest.fixture
async def no_writer(make_pair: PairFactory) -> AsyncIterator[tuple[LocalPair, FastAPI, Any]]:
    own = make_pair()
    prepare_more(own)
    settings = settings_for(own, health_interval=0.2, health_threshold=1)
    async with serving_ready(settings) as (app, client):
        own.primary.stop("immediate")
        await eventually(lambda: app.state.cluster.writer is None, "the writer lost")
        yield own, app, client


async def test_pure_reads_are_served_by_the_mirror_while_no_node_takes_writes(
    no_writer: tuple[LocalPair, FastAPI, Any],
) -> None:
    _, _, client = no_writer
    for sql in PURE_READS:
        r = await client.post("/v1/query", json={"sql": sql})
        assert r.status_code == 200, (sql, r.text)
        assert r.headers["x-mirrorpool-node"] == "mirror"
        assert r.json()["from_mirror"] is True
        assert r.json()["node"] == "mirror"
    r = await client.post("/v1/query", json={"sql": "SELECT count(*) FROM t"})
    assert r.json()["rows"] == [["5"]]  # bigint as text


async def test_anything_not_provably_a_pure_read_gets_no_writer_at_once(
    no_writer: tuple[LocalPair, FastAPI, Any],
) -> None:
    _, _, client = no_writer
    for sql in NOT_PURE:
        started = time.monotonic()
        r = await client.post("/v1/query", json={"sql": sql})
        assert r.status_code == 503, (sql, r.text)
        assert r.json()["type"].endswith("no-writer"), (sql, r.text)
        assert time.monotonic() - started < 0.5, sql


async def test_the_setting_off_keeps_plain_reads_on_the_writer(make_pair: PairFactory) -> None:
    own = make_pair()
    prepare_more(own)
    settings = settings_for(own, health_interval=0.2, plain_reads_from_mirror=False)
    async with serving_ready(settings) as (app, client):
        r = await client.post("/v1/query", json={"sql": "SELECT count(*) FROM t"})
        assert r.status_code == 200
        assert r.json()["from_mirror"] is False
        assert r.headers["x-mirrorpool-node"] == "primary"
        own.primary.stop("immediate")
        await eventually(lambda: app.state.cluster.writer is None, "the writer lost")
        r = await client.post("/v1/query", json={"sql": "SELECT count(*) FROM t"})
        assert r.status_code == 503
        assert r.json()["type"].endswith("no-writer")
        # read_only reads are served by the mirror as before.
        r = await client.post(
            "/v1/query", json={"sql": "SELECT count(*) FROM t", "read_only": True}
        )
        assert r.status_code == 200
        assert r.json()["from_mirror"] is True


class PlainLoad(Load):
    """The failover load, with readers that never say read_only."""

    async def _read(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            r = await self.client.post(
                "/v1/query", json={"sql": "SELECT count(*) FROM t", "timeout_ms": 5000}
            )
            self.outcomes.append(
                Outcome("read", started, time.monotonic(), r.status_code,
                        r.headers.get("x-mirrorpool-node"))
            )  # fmt: skip
            await asyncio.sleep(0.005)


async def test_kill_9_of_the_primary_fails_no_plain_read(make_pair: PairFactory) -> None:
    own = make_pair()
    prepare(own)
    settings = settings_for(own, **FAILOVER_SETTINGS)
    async with serving_ready(settings) as (app, client), PlainLoad(client) as load:
        await steady(1.0)
        killed = time.monotonic()
        own.primary.kill()
        await steady(2.0)
    failed = [o for o in load.reads() if o.status != 200]
    assert failed == []
    assert load.first_read_from("mirror", killed) < 0.5
    assert [o for o in load.reads() if o.started > killed + 1 and o.node != "mirror"] == []
    assert app.state.cluster.writer is None


async def test_a_plain_read_says_it_came_from_the_writer(
    make_pair: PairFactory,
) -> None:
    own = make_pair()
    prepare(own)
    async with serving_ready(settings_for(own)) as (_, client):
        assert isinstance(client, httpx.AsyncClient)
        r = await client.post("/v1/query", json={"sql": "SELECT 1"})
        assert r.json()["from_mirror"] is False
        assert r.headers["x-mirrorpool-node"] == "primary"
