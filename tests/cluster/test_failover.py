"""Failover under a steady load, with real faults on real server processes.

Each test runs 16 clients (12 read-only, 4 writing) for a few seconds against its own pair,
applies one fault, and checks what clients saw: no failed read, every write answered within
its deadline, reads served by the mirror soon after the fault.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.devdb import OWNER, LocalPair
from tests.conftest import PairFactory, serving_ready, settings_for
from tests.waiting import eventually

READ_TIMEOUT_MS = 5000
WRITE_TIMEOUT_MS = 3000


@dataclass
class Outcome:
    kind: str
    started: float
    ended: float
    status: int
    node: str | None
    ident: int | None = None


@dataclass
class Load:
    """Bounded client load; every answer is recorded with its time and serving node."""

    client: httpx.AsyncClient
    readers: int = 12
    writers: int = 4
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    async def _read(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            r = await self.client.post(
                "/v1/query",
                json={"sql": "SELECT count(*) FROM t", "read_only": True,
                      "timeout_ms": READ_TIMEOUT_MS},
            )  # fmt: skip
            self.outcomes.append(
                Outcome("read", started, time.monotonic(), r.status_code,
                        r.headers.get("x-mirrorpool-node"))
            )  # fmt: skip
            await asyncio.sleep(0.005)

    async def _write(self) -> None:
        while not self._stop.is_set():
            ident = next(self._ids)
            started = time.monotonic()
            r = await self.client.post(
                "/v1/query",
                json={"sql": "INSERT INTO t (id) VALUES ($1)", "params": [ident],
                      "timeout_ms": WRITE_TIMEOUT_MS},
            )  # fmt: skip
            self.outcomes.append(
                Outcome("write", started, time.monotonic(), r.status_code,
                        r.headers.get("x-mirrorpool-node"), ident)
            )  # fmt: skip
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> Load:
        coros = [self._read() for _ in range(self.readers)]
        coros += [self._write() for _ in range(self.writers)]
        self._tasks = [asyncio.ensure_future(c) for c in coros]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def reads(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == "read"]

    def writes(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == "write"]

    def first_read_from(self, node: str, after: float) -> float:
        served = [o.ended for o in self.reads() if o.node == node and o.started >= after]
        assert served, f"no read served by {node} after the fault"
        return min(served) - after

    def acknowledged(self) -> set[int]:
        return {o.ident for o in self.writes() if o.status == 200 and o.ident is not None}


def prepare(pair: LocalPair) -> None:
    with pair.primary.connect(user=OWNER) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    mirror = pair.mirrors[0]

    def replicated() -> bool:
        with mirror.connect() as conn:
            row = conn.execute("SELECT to_regclass('t') IS NOT NULL").fetchone()
        return bool(row and row[0])

    from tests.waiting import eventually_sync  # noqa: PLC0415

    eventually_sync(replicated, "the table on the mirror")


# Failover within a second: a check every 0.2 s, two failed ones make a node down.
FAILOVER_SETTINGS: dict[str, Any] = {
    "health_interval": 0.2,
    "health_timeout": 0.5,
    "health_threshold": 2,
    "pool_max_size": 8,
    "pool_max_waiting": 0,
}


@pytest.fixture
async def failover(make_pair: PairFactory) -> AsyncIterator[tuple[LocalPair, FastAPI, Any]]:
    own = make_pair()
    prepare(own)
    async with serving_ready(settings_for(own, **FAILOVER_SETTINGS)) as (app, client):
        yield own, app, client


async def steady(seconds: float) -> None:
    """Let the load run: the clients' own requests are the thing being observed."""
    await asyncio.sleep(seconds)


async def kill_and_promote(own: LocalPair, cluster: Any) -> float:
    """Under load: kill -9 the primary, promote the mirror once the writer is lost, and let
    the load run on it; when the promotion began (time.monotonic())."""
    await steady(0.5)
    own.primary.kill()
    await eventually(lambda: cluster.writer is None, "the writer to be lost")
    promoted = time.monotonic()
    own.mirrors[0].promote()
    await eventually(lambda: cluster.writer is not None, "the promoted writer")
    await steady(1.0)
    return promoted


def assert_writes_answered_in_time(load: Load) -> None:
    for w in load.writes():
        assert w.status in (200, 503), w
        assert w.ended - w.started < WRITE_TIMEOUT_MS / 1000 + 1.5, w


async def test_kill_9_of_the_primary(failover: tuple[LocalPair, FastAPI, Any]) -> None:
    own, app, client = failover
    async with Load(client) as load:
        await steady(1.0)
        killed = time.monotonic()
        own.primary.kill()
        await steady(2.0)
    failed = [o for o in load.reads() if o.status != 200]
    assert failed == []
    assert load.first_read_from("mirror", killed) < 0.5
    assert_writes_answered_in_time(load)
    assert app.state.cluster.writer is None
    kinds = [e.kind for e in app.state.cluster.events.recent()]
    assert "node_down" in kinds
    assert "writer_lost" in kinds


async def test_frozen_primary(failover: tuple[LocalPair, FastAPI, Any]) -> None:
    own, _, client = failover
    async with Load(client) as load:
        await steady(1.0)
        frozen = time.monotonic()
        own.primary.freeze()
        try:
            await steady(4.0)
        finally:
            own.primary.thaw()
    assert [o for o in load.reads() if o.status != 200] == []
    assert load.first_read_from("mirror", frozen) < 3.0
    assert_writes_answered_in_time(load)


async def test_clean_stop_of_the_primary(failover: tuple[LocalPair, FastAPI, Any]) -> None:
    own, _, client = failover
    async with Load(client) as load:
        await steady(1.0)
        stopped = time.monotonic()
        own.primary.stop("fast")
        await steady(2.0)
    assert [o for o in load.reads() if o.status != 200] == []
    assert load.first_read_from("mirror", stopped) < 1.0
    assert_writes_answered_in_time(load)


async def test_promotion_brings_writes_back_and_the_old_primary_is_fenced(
    failover: tuple[LocalPair, FastAPI, Any],
) -> None:
    own, app, client = failover
    cluster = app.state.cluster
    async with Load(client) as load:
        promoted = await kill_and_promote(own, cluster)
        with_old = own.primary
        with_old.start()
        await eventually(lambda: "primary" in cluster.fenced, "the old primary to be fenced")
        await steady(1.0)
    ok_after = [w.ended for w in load.writes() if w.status == 200 and w.started > promoted]
    assert ok_after, "writes flow again after the promotion"
    assert min(ok_after) - promoted < 1.0 + 1.0  # promote() itself waits for the server
    assert {w.node for w in load.writes() if w.status == 200 and w.started > promoted} == {"mirror"}
    # Nothing written through mirrorpool reached the fenced old primary.
    acknowledged_after = {
        w.ident for w in load.writes() if w.status == 200 and w.started > promoted
    }
    with own.primary.connect() as conn:
        on_old = {r[0] for r in conn.execute("SELECT id FROM t").fetchall()}
    assert not (acknowledged_after & on_old)
    assert [o for o in load.reads() if o.status != 200] == []
    assert all(o.node != "primary" for o in load.reads() if o.started > promoted)
    health = (await client.get("/health")).json()
    assert any(r.startswith("primary fenced") for r in health["reasons"])


async def test_kill_of_the_mirror_keeps_reads_on_the_primary(
    failover: tuple[LocalPair, FastAPI, Any],
) -> None:
    own, _, client = failover
    async with Load(client) as load:
        await steady(0.5)
        own.mirrors[0].kill()
        await steady(1.5)
    assert [o for o in load.outcomes if o.status != 200] == []
    assert {o.node for o in load.outcomes} == {"primary"}
    assert (await client.get("/health")).json()["status"] == "degraded"


async def test_synchronous_pair_loses_no_acknowledged_write(make_pair: PairFactory) -> None:
    own = make_pair(synchronous=True)
    prepare(own)
    settings = settings_for(own, health_interval=0.2, health_timeout=0.5, health_threshold=2)
    async with serving_ready(settings) as (_, client), Load(client, readers=2, writers=8) as load:
        await steady(1.5)
        own.primary.kill()
        await steady(0.5)
    acknowledged = load.acknowledged()
    assert len(acknowledged) > 20
    own.mirrors[0].promote()
    with own.mirrors[0].connect() as conn:
        present = {r[0] for r in conn.execute("SELECT id FROM t").fetchall()}
    assert acknowledged <= present


async def test_admin_promote_endpoint(failover: tuple[LocalPair, FastAPI, Any]) -> None:
    own, app, client = failover
    refused = await client.post("/v1/admin/promote", json={"node": "primary"})
    assert refused.status_code == 409
    own.primary.kill()
    await eventually(lambda: app.state.cluster.writer is None, "the writer to be lost")
    response = await client.post("/v1/admin/promote", json={"node": "mirror"})
    assert response.status_code == 200, response.text
    assert response.json() == {"node": "mirror", "writer": "mirror"}
    write = await client.post("/v1/query", json={"sql": "INSERT INTO t VALUES (1)"})
    assert write.status_code == 200
    assert write.headers["x-mirrorpool-node"] == "mirror"


async def test_promote_after_promotes_the_mirror_by_itself(make_pair: PairFactory) -> None:
    own = make_pair()
    prepare(own)
    settings = settings_for(
        own, health_interval=0.2, health_timeout=0.5, health_threshold=2, promote_after_s=1.0
    )
    async with serving_ready(settings) as (app, client):
        own.primary.kill()
        cluster = app.state.cluster
        # The quick probes may see the mirror take writes before pg_promote() has returned
        # and the promotion is recorded: both are waited for.
        await eventually(
            lambda: (
                cluster.writer is not None
                and cluster.writer.name == "mirror"
                and "promoted" in [e.kind for e in cluster.events.recent()]
            ),
            "the mirror to be promoted",
        )
        # (in a thread: a blocking connect here would stall the service's own loop)
        assert not await asyncio.to_thread(own.mirrors[0].in_recovery)
        write = await client.post("/v1/query", json={"sql": "INSERT INTO t VALUES (1)"})
        assert write.status_code == 200


async def test_reads_from_mirror_when_asked(make_pair: PairFactory) -> None:
    own = make_pair()
    prepare(own)
    settings = settings_for(own, read_from_mirror=True, max_replica_lag_ms=5000)
    async with serving_ready(settings) as (app, client):
        await eventually(
            lambda: app.state.cluster.node("mirror").state.replay_lag_s is not None, "lag figures"
        )
        read = await client.post("/v1/query", json={"sql": "SELECT 1", "read_only": True})
        assert read.headers["x-mirrorpool-node"] == "mirror"
        write = await client.post("/v1/query", json={"sql": "SELECT 1"})
        assert write.headers["x-mirrorpool-node"] == "primary"
