"""The engine without HTTP: its strategies answer alike, a stream's producer is the
supervisor's task, and a stream given up on gives its connection back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.cluster.cluster import Cluster
from app.devdb import LocalPair
from app.errors import MirrorpoolError, QueryTimeout
from app.main import build_cluster
from app.settings import Settings
from app.sql.engine import Engine, Limits
from app.sql.options import EngineOptions, StatementRules
from app.sql.statement import prepare
from app.supervisor import Supervisor
from tests.conftest import as_owner, settings_for
from tests.waiting import eventually


@pytest.fixture
def settings(pair: LocalPair) -> Settings:
    return settings_for(pair, pool_min_size=0, pool_max_size=2)


@pytest.fixture
async def cluster(settings: Settings) -> AsyncIterator[Cluster]:
    # Built as the service builds it: sessions carry the default timeouts.
    made = build_cluster(settings)
    await made.open()
    assert await made.wait_for_writer(10) is not None
    yield made
    await made.close(5)


@pytest.fixture
async def supervisor() -> AsyncIterator[Supervisor]:
    made = Supervisor()
    yield made
    await made.close()


@pytest.fixture
async def engine(cluster: Cluster, settings: Settings, supervisor: Supervisor) -> Engine:
    made = Engine(
        cluster,
        EngineOptions.of(settings),
        supervisor=supervisor,
        rules=StatementRules.of(settings),
    )
    await made.open()  # the catalog read, as the lifespan does
    assert made.schema.current.known
    return made


def limits(settings: Settings, **extra: Any) -> Limits:
    values: dict[str, Any] = {"timeout_ms": settings.statement_timeout_ms, "max_rows": 100}
    return Limits(**(values | extra))


async def test_plain_pipelined_and_lane_answer_the_same(engine: Engine, settings: Settings) -> None:
    bound = prepare("SELECT $1::int + 1 AS n", [41], engine.rules)
    plain = await engine.run(bound, limits(settings))
    wrapped = await engine.run(bound, limits(settings, read_only=True))
    assert engine.mux is not None
    lane = engine.mux.stats(plain.node)

    async def in_lane() -> bool:
        before = engine.mux.stats(plain.node).statements if engine.mux else 0
        answer = await engine.run(bound, limits(settings))
        assert answer.results[0].rows == [(42,)]
        return bool(engine.mux and engine.mux.stats(plain.node).statements > before)

    await eventually(in_lane, "the statement to join the lane")
    assert plain.results[0].rows == wrapped.results[0].rows == [(42,)]
    assert engine.mux.stats(plain.node).statements > lane.statements


async def test_a_transaction_names_the_statement_that_failed(
    engine: Engine, settings: Settings
) -> None:
    statements = [prepare(sql, None, engine.rules) for sql in ("SELECT 1", "SELECT 1 / 0")]
    with pytest.raises(MirrorpoolError, match="division by zero") as failed:
        await engine.transaction(
            statements,
            isolation="read_committed",
            read_only=False,
            timeout_ms=settings.statement_timeout_ms,
            max_rows=10,
            row_format="array",
        )
    assert failed.value.extra.get("statement_index") == 1


async def test_a_stream_runs_in_the_supervisors_task_and_gives_its_connection_back(
    engine: Engine, settings: Settings, supervisor: Supervisor, cluster: Cluster
) -> None:
    bound = prepare("SELECT g FROM generate_series(1, 100000) AS g", None, engine.rules)
    events = engine.stream(bound, limits(settings), chunk_rows=100)
    kind, node = await anext(events)
    assert kind == "node"
    assert "stream" in supervisor.names()
    kind, _ = await anext(events)
    assert kind == "columns"
    kind, rows = await anext(events)
    assert kind == "rows" and len(rows) == 100
    await events.aclose()  # its client left after the first rows
    await eventually(lambda: "stream" not in supervisor.names(), "the producer to end")
    target = cluster.node(node)
    assert target is not None
    await eventually(
        lambda: target.pool_stats()["pool_available"] == target.pool_stats()["pool_size"],
        "the stream's connection to come back",
    )


async def test_a_streams_head_gives_up_at_the_deadline(
    engine: Engine, settings: Settings, cluster: Cluster, supervisor: Supervisor
) -> None:
    bound = prepare("SELECT 1", None, engine.rules)
    node = cluster.pick("write")
    # Both of the pool's connections are taken: the stream's producer waits for one (up
    # to the pool's timeout, 5 s), and its consumer gives up at the request's deadline.
    async with engine.checkouts.session(node), engine.checkouts.session(node):
        events = engine.stream(bound, limits(settings, timeout_ms=200), chunk_rows=100)

        async def head() -> Any:
            return await anext(events), await anext(events)

        started = time.monotonic()
        with pytest.raises(QueryTimeout, match="within 200 ms"):
            await engine.with_deadline(head(), 200)
        # The request's deadline: its timeout plus the grace given to the server's own.
        assert 1.0 <= time.monotonic() - started < 4
        await events.aclose()
        await eventually(lambda: "stream" not in supervisor.names(), "the producer to end")


@pytest.mark.parametrize(
    ("sql", "read_only", "marks"),
    [
        ("SELECT public.one14u()", False, True),  # a call of own code may run DDL
        ("SELECT public.one14u()", True, False),  # PostgreSQL refuses a read-only one DDL
        ("SELECT g FROM generate_series(1, 3) AS g", False, False),
    ],
    ids=["own-call", "own-call-read-only", "query"],
)
async def test_a_stream_that_may_change_the_schema_marks_it_as_run_does(
    engine: Engine,
    settings: Settings,
    pair: LocalPair,
    monkeypatch: pytest.MonkeyPatch,
    sql: str,
    read_only: bool,
    marks: bool,
) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.one14u() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
    )
    seen: list[bool] = []  # whether the facts were known, at each event
    marked: list[str] = []
    changed = engine.schema.changed

    def counting() -> None:
        marked.append(sql)
        changed()

    monkeypatch.setattr(engine.schema, "changed", counting)
    bound = prepare(sql, None, engine.rules)
    async for kind, _ in engine.stream(bound, limits(settings, read_only=read_only), 10):
        seen.append(engine.schema.current.known)
        if kind == "end":
            break
    # (unknown from before the statement starts until read after it ends, as in run())
    assert len(marked) == (2 if marks else 0)
    assert seen and (marks or all(seen))
