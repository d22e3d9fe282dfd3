"""mirrorpool in front of a real Patroni cluster (tests/cluster/patroni.py), under mixed load.

Patroni decides who leads (MIRRORPOOL_PROMOTE_AFTER_S stays off); mirrorpool, with its
default 1 s health interval, follows. Each event runs under 8 read-only readers and 4
writers, and checks what the issue asks of a failover nobody notices: no failed read, every
acknowledged write on the final leader, no write acknowledged by a node that was not the
leader, and writes back within 0.5 s of the promotion (its completion as seen by a watcher
polling both servers every 5 ms, tests/cluster/watch.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from app.devdb import OWNER, SERVICE
from app.settings import Settings, load_settings
from tests.cluster.load import TIMELINE_SQL, Load, fresh_table
from tests.cluster.patroni import PatroniCluster
from tests.cluster.watch import RoleWatch
from tests.conftest import serving_ready
from tests.waiting import eventually, eventually_sync

# mirrorpool's node names for the members, in configuration order.
NODES = {"primary": "p0", "mirror": "p1"}
WRITES_BACK_S = 0.5


@pytest.fixture(scope="module")
def patroni(work_dir: Path) -> Iterator[PatroniCluster]:
    """One Patroni cluster for the module's events, healthy again before each."""
    with PatroniCluster(work_dir / "patroni") as cluster:
        yield cluster


def settings_for_patroni(cluster: PatroniCluster) -> Settings:
    """One DSN per member, as the README recommends for Patroni; the defaults otherwise."""
    p0, p1 = (cluster.member(name) for name in NODES.values())
    migrations = make_conninfo(
        "", host="127.0.0.1,127.0.0.1", port=f"{p0.pg_port},{p1.pg_port}", user=OWNER,
        password=cluster.passwords[OWNER], dbname="postgres",
        target_session_attrs="read-write",
    )  # fmt: skip
    settings = load_settings(
        primary_dsn=p0.dsn(user=SERVICE),
        mirror_dsn=p1.dsn(user=SERVICE),
        migrations_dsn=migrations,
        pool_min_size=2,
        pool_max_size=8,
        shutdown_timeout=5,
        auth="disabled",
    )
    # Patroni decides who leads: two deciders could make two primaries.
    assert settings.promote_after_s is None
    assert settings.health_interval == 1.0
    return settings


async def follow(
    cluster: PatroniCluster, fault: str, apply: Callable[[], None], *, restart: str | None = None
) -> None:
    """Run the load, apply the fault, wait for Patroni's promotion and the first write after
    it, then check what the clients saw."""
    fresh_table(cluster)
    async with serving_ready(settings_for_patroni(cluster)) as (app, client):
        cluster_view = app.state.cluster
        await eventually(lambda: cluster_view.writer is not None, "mirrorpool's writer")
        with RoleWatch({m.name: m.dsn() for m in cluster.members}) as watch:
            async with Load(client, readers=8, writers=4) as load:
                await load.run_for(1.0)
                fault_at = time.monotonic()
                await asyncio.to_thread(apply)
                await eventually(
                    lambda: watch.last_promotion(fault_at) is not None, "Patroni's promotion", 40
                )
                promotion = watch.last_promotion(fault_at)
                assert promotion is not None
                promoted, promoted_at = promotion
                await eventually(
                    lambda: load.first_write_after(promoted_at) is not None, "writes back", 10
                )
                await load.run_for(0.5)
    if restart is not None:
        cluster.member(restart).start()
    leader = cluster.wait_healthy()
    check(cluster, load, fault, promoted, promoted_at, leader.name)


def check(
    cluster: PatroniCluster, load: Load, fault: str, promoted: str, promoted_at: float, final: str
) -> None:
    back = load.first_write_after(promoted_at)
    assert back is not None
    acked = load.acknowledged()
    with cluster.member(final).connect() as conn:
        rows = dict(conn.execute("SELECT id, tli FROM t").fetchall())
        (timeline,) = conn.execute(f"SELECT {TIMELINE_SQL}").fetchone() or (None,)
    delay = back - promoted_at
    print(
        f"patroni {fault}: {len(load.reads())} reads, {len(load.failed_reads())} failed; "
        f"{len(acked)} writes acknowledged, {len(set(acked) - set(rows))} lost; "
        f"writes back {delay:.3f} s after {promoted}'s promotion"
    )
    assert load.failed_reads() == []
    assert set(acked) <= set(rows), f"lost acknowledged writes: {sorted(set(acked) - set(rows))}"
    # Acknowledged after the promotion: by the promoted member, on its new timeline.
    late = [a for a in acked.values() if a.started > promoted_at]
    assert late
    assert load.failed_writes_after(promoted_at) == []
    assert {NODES[a.node] for a in late if a.node} == {promoted}
    assert {rows[a.ident] for a in late if a.ident is not None} == {timeline}
    # Before the promotion, only the leader of the time took writes: every one of them is
    # on the final leader's history (checked above), none on a timeline it did not follow.
    assert delay < WRITES_BACK_S, f"writes back {delay:.3f} s after the promotion"


async def test_patronictl_switchover(patroni: PatroniCluster) -> None:
    await follow(patroni, "switchover", lambda: patroni.switchover(patroni.replica()))


async def test_crash_of_the_leaders_patroni_and_postmaster(patroni: PatroniCluster) -> None:
    leader = patroni.wait_healthy()
    await follow(patroni, "crash", leader.crash, restart=leader.name)


async def test_an_etcd_stall_that_demotes_the_leader(patroni: PatroniCluster) -> None:
    leader = patroni.wait_healthy()

    def stall() -> None:
        patroni.freeze_etcd()
        try:
            # Long enough for Patroni to demote the leader: it cannot renew its key.
            eventually_sync(lambda: not leader_writable(), "the leader to be demoted", 30)
        finally:
            patroni.thaw_etcd()

    def leader_writable() -> bool:
        try:
            with leader.connect() as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        except Exception:
            return False
        return bool(row and not row[0])

    await follow(patroni, "etcd stall", stall)
