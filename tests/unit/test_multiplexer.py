"""The lanes on their own (app/sql/multiplex.py): statements waiting together go in one
batch, each is settled on its own, and runners are the supervisor's tasks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from app.cluster.cluster import Cluster
from app.errors import PoolExhausted
from app.sql import schema_code
from app.sql.columns import TypeNames
from app.sql.multiplex import Job, Multiplexer
from app.sql.options import LaneOptions
from app.sql.schema_watch import SchemaWatch
from app.sql.tree import parse
from app.supervisor import Supervisor
from tests.unit.conftest import checkouts_of
from tests.waiting import eventually

SQL = "SELECT $1::int * 10 AS n"


def lanes(cluster: Cluster, supervisor: Supervisor, **overrides: Any) -> Multiplexer:
    values: dict[str, Any] = {
        "pool_max_size": 1,  # one runner: every statement waiting goes in its batch
        "pool_max_waiting": 100,
        "pool_timeout": 5.0,
        "statement_timeout_ms": 5_000,
        "max_response_bytes": 1 << 20,
        **overrides,
    }
    return Multiplexer(
        LaneOptions(**values),
        checkouts_of(cluster),
        TypeNames(),
        supervisor,
        SchemaWatch.fixed(schema_code.NOTHING),
    )


async def run(mux: Multiplexer, cluster: Cluster, sql: str, params: list[Any]) -> Any:
    node = cluster.pick("write")
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    return await mux.run(node, "key", Job(sql, parse(sql), params, 100, "array", future))


async def test_statements_waiting_together_share_a_batch_each_settled_alone(
    cluster: Cluster,
) -> None:
    supervisor = Supervisor()
    mux = lanes(cluster, supervisor)
    calls = [run(mux, cluster, SQL, [i]) for i in range(6)]
    calls.insert(3, run(mux, cluster, "SELECT 1 / $1::int", [0]))
    answers = await asyncio.gather(*calls, return_exceptions=True)
    failed = answers.pop(3)
    assert isinstance(failed, psycopg.errors.DivisionByZero)
    assert [getattr(a, "rows", a) for a in answers] == [[(i * 10,)] for i in range(6)]
    stats = mux.stats(cluster.pick("write").name)
    assert stats.statements == 7
    assert stats.batches < 7  # they shared round trips
    await supervisor.close()


async def test_a_full_lane_refuses_at_once(cluster: Cluster) -> None:
    supervisor = Supervisor()
    mux = lanes(cluster, supervisor, pool_max_waiting=2)
    # The lane's only runner waits for a connection both of the pool's are holding.
    checkouts = checkouts_of(cluster)
    node = cluster.pick("write")
    async with checkouts.session(node), checkouts.session(node):
        waiting = [asyncio.ensure_future(run(mux, cluster, SQL, [i])) for i in range(2)]
        await eventually(lambda: len(mux.lane(node, "key")._pending) == 2, "two to wait")
        with pytest.raises(PoolExhausted, match="too many requests are waiting"):
            await run(mux, cluster, SQL, [3])
    # Connections free again: the two waiting are answered.
    answers = await asyncio.gather(*waiting)
    assert [a.rows for a in answers] == [[(0,)], [(10,)]]
    await supervisor.close()


async def test_runners_are_the_supervisors_and_stop_with_it(cluster: Cluster) -> None:
    supervisor = Supervisor()
    mux = lanes(cluster, supervisor)
    checkouts = checkouts_of(cluster)
    node = cluster.pick("write")
    async with checkouts.session(node), checkouts.session(node):
        waiting = asyncio.ensure_future(run(mux, cluster, SQL, [1]))
        await eventually(lambda: "lane-primary" in supervisor.names(), "the runner to start")
        await supervisor.close(timeout_s=5)
        assert supervisor.running == 0
    waiting.cancel()


async def test_each_statement_is_answered_as_its_own_sync_comes_back(cluster: Cluster) -> None:
    supervisor = Supervisor()
    mux = lanes(cluster, supervisor)
    checkouts = checkouts_of(cluster)
    node = cluster.pick("write")
    answered: dict[str, float] = {}

    async def timed(name: str, sql: str, params: list[Any]) -> None:
        await run(mux, cluster, sql, params)
        answered[name] = time.monotonic()

    # Both wait in one batch, the quick one first: its answer does not wait for the slow one.
    async with checkouts.session(node), checkouts.session(node):
        quick = asyncio.ensure_future(timed("quick", SQL, [1]))
        await eventually(lambda: len(mux.lane(node, "key")._pending) == 1, "the first to wait")
        slow = asyncio.ensure_future(timed("slow", "SELECT pg_sleep($1::float8)", [1.0]))
        await eventually(lambda: len(mux.lane(node, "key")._pending) == 2, "both to wait")
        released = time.monotonic()
    await asyncio.gather(quick, slow)
    assert mux.stats(node.name).batches == 1
    assert answered["slow"] - released >= 1.0
    assert answered["quick"] - released < 0.5, answered["quick"] - released
    await supervisor.close()
