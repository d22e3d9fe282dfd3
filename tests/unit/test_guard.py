"""The one deadline (app/sql/guard.py): it fires once, ends the server's work, moves on with
progress for lanes, and gives up when the client leaves."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from app.cluster.cluster import Cluster
from app.devdb import LocalPair
from app.errors import ClientGone, QueryTimeout
from app.sql import pipeline
from app.sql.checkout import Checkout
from app.sql.guard import Guard
from app.sql.pipeline import Command
from tests.unit.conftest import backend_alive, checkouts_of
from tests.waiting import eventually, eventually_sync


async def sleep_under(guard: Guard, held: Any) -> None:
    """pg_sleep(30) under the guard; the session has no statement_timeout of its own, so
    only the guard stops it."""
    async with guard:
        guard.use(held)
        await held.conn.execute("SELECT pg_sleep(30)")


class Counted:
    """A held connection that counts how often the guard ended it."""

    def __init__(self, held: Checkout) -> None:
        self.held = held
        self.conn = held.conn
        self.ends = 0

    def end(self) -> None:
        self.ends += 1
        self.held.end()


async def test_a_deadline_fires_once_and_ends_the_servers_work(
    pair: LocalPair, cluster: Cluster
) -> None:
    checkouts = checkouts_of(cluster)
    node = cluster.pick("write")
    held = await checkouts.take(node)
    pid = held.conn.info.backend_pid
    counted = Counted(held)
    started = time.monotonic()
    try:
        guard = Guard(200, grace_s=0)
        with pytest.raises(QueryTimeout, match="within 200 ms"):
            await sleep_under(guard, counted)
    finally:
        await held.give_back()
    assert time.monotonic() - started < 5
    assert guard.expired
    # The backend is ended on the server (cancelled, then terminated if it ran on), and
    # its connection is held against the pool until then.
    await asyncio.to_thread(
        eventually_sync, lambda: not backend_alive(pair, pid), "the backend to be gone"
    )
    await eventually(lambda: cluster.backends.held(node.name) == 0, "the slot to come back")
    assert counted.ends == 1


async def test_without_a_connection_the_guarded_task_is_cancelled() -> None:
    never = asyncio.Event()
    started = time.monotonic()
    with pytest.raises(QueryTimeout):
        async with Guard(100, grace_s=0):
            await never.wait()  # as a request waiting for a connection, or for a stream
    assert time.monotonic() - started < 2
    # The task itself is not left cancelled: it goes on to answer the timeout.
    task = asyncio.current_task()
    assert task is not None and not task.cancelling()


async def test_the_client_leaving_ends_the_statement(pair: LocalPair, cluster: Cluster) -> None:
    checkouts = checkouts_of(cluster)
    left = asyncio.Event()
    held = await checkouts.take(cluster.pick("write"))
    pid = held.conn.info.backend_pid
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, left.set)
    try:
        with pytest.raises(ClientGone):
            await sleep_under(Guard(30_000, left.wait), held)
    finally:
        await held.give_back()
    await asyncio.to_thread(
        eventually_sync, lambda: not backend_alive(pair, pid), "the backend to be gone"
    )


def sleeps(count: int, seconds: float) -> list[list[Command]]:
    command = Command("SELECT pg_sleep($1::float8)", [seconds], prepare=False)
    return [[command] for _ in range(count)]


async def test_an_idle_guard_holds_a_batch_to_each_answer_not_the_whole(cluster: Cluster) -> None:
    checkouts = checkouts_of(cluster)
    async with checkouts.session(cluster.pick("write")) as held:
        # Five answers 0.1 s apart: 0.5 s in all, well past the 0.3 s bound, each within it.
        guard = Guard(300, grace_s=0, idle=True)
        guard.use(held)
        guard.start()
        try:
            units = await pipeline.run_units(held.conn, sleeps(5, 0.1), guard.progress)
        finally:
            guard.stop()
        assert not guard.expired
        assert all(u.replies[0].error is None for u in units)


async def test_a_whole_batch_guard_ends_the_connection(cluster: Cluster) -> None:
    checkouts = checkouts_of(cluster)
    async with checkouts.session(cluster.pick("write")) as held:
        guard = Guard(300, grace_s=0)
        guard.use(held)
        guard.start()  # no task: only the connection is ended
        errors: tuple[type[BaseException], ...] = (psycopg.Error, OSError)
        try:
            with pytest.raises(errors):
                await pipeline.run_units(held.conn, sleeps(5, 0.1), guard.progress)
        finally:
            guard.stop()
        assert guard.expired
        assert held.conn.closed


async def test_a_guard_that_finishes_in_time_changes_nothing(cluster: Cluster) -> None:
    checkouts = checkouts_of(cluster)
    async with checkouts.session(cluster.pick("write")) as held:
        async with Guard(5_000) as guard:
            guard.use(held)
            cur: Any = await held.conn.execute("SELECT 41 + 1")
            assert (await cur.fetchone())[0] == 42
        assert not guard.expired
        assert not held.conn.closed
