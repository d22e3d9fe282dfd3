"""A promotion is followed at once, and a lost node's pool reports only what is real.

While no node accepts writes, mirrorpool probes the candidates every 50-100 ms
(app/cluster/monitor.py HealthMonitor.hunt), so with the default 1 s health interval a
promoted mirror takes writes within 0.2 s of its promotion, as a watcher polling the server
every 5 ms first sees it writable. A node found down fails the requests waiting for its pool
at once and counts its connections as lost (app/cluster/node.py Node.lose).
"""

from __future__ import annotations

import asyncio

import pytest

from app.devdb import OWNER, LocalPair
from tests.cluster.load import TABLE_SQL, Load
from tests.cluster.watch import RoleWatch
from tests.conftest import PairFactory, serving_ready, settings_for
from tests.waiting import eventually, eventually_sync


def prepare(pair: LocalPair) -> None:
    """The load's table, on the primary and replicated to the mirror."""
    with pair.primary.connect(user=OWNER) as conn:
        conn.execute(TABLE_SQL)

    def replicated() -> bool:
        with pair.mirrors[0].connect() as conn:
            row = conn.execute("SELECT to_regclass('t') IS NOT NULL").fetchone()
        return bool(row and row[0])

    eventually_sync(replicated, "the table on the mirror")


def acknowledged_rows(pair: LocalPair, ids: set[int]) -> set[int]:
    with pair.mirrors[0].connect() as conn:
        rows = conn.execute("SELECT id FROM t WHERE id = ANY(%s)", [list(ids)]).fetchall()
    return {r[0] for r in rows}


# (timing: a bound in milliseconds, met with nothing else taking the CPU; at 0.205 s
# once with the suite's other process and a second job on 2 cores)
@pytest.mark.timing
async def test_writes_follow_a_promotion_within_0_2_s(make_pair: PairFactory) -> None:
    own = make_pair()
    prepare(own)
    mirror = own.mirrors[0]
    # The default interval: without the quick probes while there is no writer, the
    # promotion would be seen up to a second late.
    settings = settings_for(
        own, health_interval=1.0, health_timeout=1.0, health_threshold=2, pool_max_size=8
    )
    async with serving_ready(settings) as (app, client):
        cluster = app.state.cluster
        with RoleWatch({"mirror": mirror.dsn()}) as watch:
            async with Load(client, readers=4, writers=4) as load:
                await load.run_for(0.5)
                own.primary.kill()
                await eventually(lambda: cluster.writer is None, "the writer to be lost")
                # Long enough for the probes to slow to their slowest pace.
                await load.run_for(1.5)
                await asyncio.to_thread(mirror.promote)
                promoted = watch.last_promotion()
                assert promoted is not None
                await eventually(
                    lambda: load.first_write_after(promoted[1]) is not None, "a write", 5
                )
    back = load.first_write_after(promoted[1])
    assert back is not None
    print(f"pg_promote: writes back {back - promoted[1]:.3f} s after the promotion")
    assert back - promoted[1] < 0.2, f"writes back {back - promoted[1]:.3f} s after promotion"
    assert cluster.writer is not None and cluster.writer.name == "mirror"
    # The first write that reached the promoted mirror succeeded, and every one after it.
    assert load.failed_writes_after(promoted[1]) == []
    assert load.failed_reads() == []
    acked = load.acknowledged()
    assert acknowledged_rows(own, set(acked)) == set(acked)


async def test_a_dead_nodes_pool_shows_no_phantom_waiters(make_pair: PairFactory) -> None:
    own = make_pair()
    prepare(own)
    # A small pool and slow reads: requests queue for the primary's connections.
    settings = settings_for(
        own, health_interval=0.2, health_timeout=0.5, health_threshold=2, pool_min_size=2,
        pool_max_size=2, pool_max_waiting=0, pool_timeout=2.0,
    )  # fmt: skip
    async with serving_ready(settings) as (app, client):
        cluster = app.state.cluster
        primary = cluster.node("primary")
        slow = "SELECT count(*) FROM t, pg_sleep(0.2)"
        async with Load(client, readers=8, writers=0, read_sql=slow) as load:
            await eventually(
                lambda: primary.pool_stats()["requests_waiting"] >= 3, "requests queueing", 5
            )
            own.primary.kill()
            await eventually(lambda: primary.state.reachable is False, "the primary down")
            await load.run_for(0.5)
        # Nobody waits for the dead primary: its pool says so, at once and for good.
        await eventually(lambda: primary.pool_stats()["requests_waiting"] == 0, "no waiters", 1)
        stats = (await client.get("/pool/stats")).json()
        (node,) = [n for n in stats["nodes"] if n["name"] == "primary"]
        assert node["pool"]["requests_waiting"] == 0
        assert node["pool"]["connections_lost"] >= 2
        metrics = (await client.get("/metrics")).text
        assert 'mirrorpool_pool_waiting_requests{node="primary"} 0.0' in metrics
        lost = [
            line
            for line in metrics.splitlines()
            if line.startswith('mirrorpool_pool_connections_lost_total{node="primary"}')
        ]
        assert lost and float(lost[0].split()[-1]) >= 2, lost
    # The queued reads went to the mirror instead of failing.
    assert load.failed_reads() == []
    assert any(a.node == "mirror" for a in load.reads())
