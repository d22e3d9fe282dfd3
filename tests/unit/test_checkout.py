"""The checkout gives every request a clean session, and no key more than its share."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.cluster.cluster import Cluster
from app.errors import PoolExhausted
from app.sql import session
from app.sql.session import Effect
from app.sql.tree import parse
from tests.unit.conftest import ClusterFactory, checkouts_of


async def show(conn: object, name: str) -> str:
    cur = await conn.execute(f"SHOW {name}")  # type: ignore[attr-defined]
    row = await cur.fetchone()
    return str(row[0])


async def test_a_connection_comes_back_reset_after_a_session_effect(cluster: Cluster) -> None:
    checkouts = checkouts_of(cluster)
    node = cluster.pick("write")
    async with checkouts.session(node) as held:
        pid = held.conn.info.backend_pid
        default = await show(held.conn, "work_mem")
        statement = "SET work_mem = '77kB'"
        held.mark(session.effect(parse(statement)))
        await held.conn.execute(statement)
        assert await show(held.conn, "work_mem") == "77kB"
    # Both connections of the pool: the one used above is among them, reset.
    async with checkouts.session(node) as first, checkouts.session(node) as second:
        again = first if first.conn.info.backend_pid == pid else second
        assert again.conn.info.backend_pid == pid
        assert await show(again.conn, "work_mem") == default


async def test_a_changed_reported_setting_is_reset_even_unmarked(cluster: Cluster) -> None:
    checkouts = checkouts_of(cluster)
    node = cluster.pick("write")
    async with checkouts.session(node) as held:
        zone = await show(held.conn, "TimeZone")
        pid = held.conn.info.backend_pid
        # Not marked: the server reports the change, and the snapshot taken at checkout
        # differs from what the connection says when it goes back.
        await held.conn.execute("SET TimeZone = 'Asia/Tokyo'")
    async with checkouts.session(node) as first, checkouts.session(node) as second:
        again = first if first.conn.info.backend_pid == pid else second
        assert await show(again.conn, "TimeZone") == zone


async def test_an_effect_no_reset_undoes_closes_the_connection(cluster: Cluster) -> None:
    checkouts = checkouts_of(cluster)
    node = cluster.pick("write")
    async with checkouts.session(node) as held:
        pid = held.conn.info.backend_pid
        await held.conn.execute("SELECT setseed(0.5)")
        held.mark(Effect.CLOSE)
    async with checkouts.session(node) as first, checkouts.session(node) as second:
        pids = {first.conn.info.backend_pid, second.conn.info.backend_pid}
    assert pid not in pids


async def test_a_key_at_its_share_waits_in_its_own_line(make_cluster: ClusterFactory) -> None:
    # A pool of two: each key's share is one connection.
    cluster = await make_cluster(pool_min_size=0, pool_max_size=2, key_max_pool_share=0.5)
    checkouts = checkouts_of(cluster, pool_timeout=0.3, shares=True)
    node = cluster.pick("write")
    async with checkouts.session(node, key="flood"):
        started = time.monotonic()
        with pytest.raises(PoolExhausted, match="holds its share"):
            await checkouts.take(node, key="flood")
        assert time.monotonic() - started < 2
        # The other key goes straight to the connection left free.
        async with checkouts.session(node, key="other") as held:
            assert not held.conn.closed
    # Given back, the share is free again.
    async with asyncio.timeout(5), checkouts.session(node, key="flood") as held:
        assert not held.conn.closed


async def test_a_pool_with_no_connection_free_answers_pool_exhausted(cluster: Cluster) -> None:
    checkouts = checkouts_of(cluster, pool_timeout=0.2)
    node = cluster.pick("write")
    async with checkouts.session(node), checkouts.session(node):
        with pytest.raises(PoolExhausted, match="became free in time"):
            await checkouts.take(node)
