"""Multiplexing: quick plain statements share pooled connections, pipelined, each on its own.

Every test runs many requests at once against a small pool, so statements really do queue
and share round trips (checked in /pool/stats), and checks what each caller got back.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.devdb import OWNER, SERVICE, LocalPair
from app.sql import schema_code
from app.sql.quick import Known
from app.sql.schema_watch import SchemaWatch
from app.sql.text_cache import CACHEABLE_LENGTH
from app.sql.tree import parse
from tests.conftest import PairFactory, as_owner, serving_ready, settings_for
from tests.pgbouncer import LocalPgBouncer
from tests.waiting import eventually


@pytest.fixture
async def api(pair: LocalPair) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    # A plain select counts as quick under 15 ms here, not 5: on a busy machine (the suite
    # beside other work) one run of a batch over 5 ms took a statement out of the lane.
    settings = settings_for(
        pair, pool_max_size=2, pool_max_waiting=1000, multiplex_quick_ms=15, multiplex_writes=True
    )
    async with serving_ready(settings) as served:
        yield served


@pytest.fixture
async def client(api: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return api[1]


async def q(client: httpx.AsyncClient, sql: str, params: Any = None, **extra: Any) -> Any:
    return await client.post("/v1/query", json={"sql": sql, "params": params, **extra})


async def warm(client: httpx.AsyncClient, sql: str, params: Any) -> None:
    """Run a statement on its own until the lane takes it: the lane takes statements it
    knows are quick (the first run plans it and may be slow, and so may a run on a busy
    machine)."""

    async def in_lane() -> bool:
        before = (await lane(client))["statements"]
        answer = await q(client, sql, params)
        assert answer.status_code == 200, answer.text
        return bool((await lane(client))["statements"] > before)

    await eventually(in_lane, "the statement to join the lane", timeout=20)


async def lane(client: httpx.AsyncClient) -> dict[str, Any]:
    stats = (await client.get("/pool/stats")).json()
    primary = next(n for n in stats["nodes"] if n["name"] == "primary")
    assert primary["multiplexing"] is not None
    result: dict[str, Any] = primary["multiplexing"]
    return result


def fresh_table(pair: LocalPair, columns: str) -> str:
    name = f"mux_{uuid.uuid4().hex[:12]}"
    as_owner(pair, f"CREATE TABLE {name} ({columns})")
    return name


async def test_concurrent_reads_share_round_trips_and_each_gets_its_own_row(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    table = fresh_table(pair, "id int PRIMARY KEY, label text")
    filled = await q(
        client, f"INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, 300) g"
    )
    assert filled.status_code == 200
    sql = f"SELECT id, label FROM {table} WHERE id = $1"
    await warm(client, sql, [1])
    before = await lane(client)

    answers = await asyncio.gather(*(q(client, sql, [i]) for i in range(1, 301)))

    for i, answer in enumerate(answers, start=1):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["rows"] == [[i, f"row {i}"]]
        assert [c["type"] for c in body["columns"]] == ["int4", "text"]
        assert body["command"] == "SELECT 1"
    after = await lane(client)
    statements = after["statements"] - before["statements"]
    batches = after["batches"] - before["batches"]
    assert statements == 300
    # Two pool connections served 300 statements in far fewer round trips.
    assert batches <= statements / 4, after
    assert after["largest_batch"] > 4


async def test_writes_share_lanes_and_each_stands_alone(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    # A plain insert is its own transaction in autocommit, and in a lane too (its own Sync):
    # one that fails (a duplicate) leaves its neighbours committed.
    table = fresh_table(pair, "k int UNIQUE, at timestamptz DEFAULT now()")
    insert = f"INSERT INTO {table} (k) VALUES ($1) RETURNING k"
    warming = iter(range(-1, -1000, -1))

    async def in_lane() -> bool:
        before = (await lane(client))["statements"]
        assert (await q(client, insert, [next(warming)])).status_code == 200
        return bool((await lane(client))["statements"] > before)

    await eventually(in_lane, "the insert to join the lane", timeout=20)
    warmed = -next(warming) - 1
    before = await lane(client)

    answers = await asyncio.gather(*(q(client, insert, [i % 50]) for i in range(100)))

    ok = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(ok) == 50
    assert sorted(a.json()["rows"][0][0] for a in ok) == list(range(50))
    assert {(a.status_code, a.json()["sqlstate"]) for a in refused} == {(409, "23505")}
    count = await q(client, f"SELECT count(*) AS n, count(DISTINCT k) AS k FROM {table}")
    assert count.json()["rows"] == [[str(50 + warmed)] * 2]
    after = await lane(client)
    assert after["statements"] - before["statements"] >= 50
    assert after["batches"] - before["batches"] < after["statements"] - before["statements"]


async def test_locking_reads_keep_a_connection_of_their_own(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    table = fresh_table(pair, "k int UNIQUE")
    as_owner(pair, f"INSERT INTO {table} SELECT g FROM generate_series(0, 19) g")
    locking = f"SELECT k FROM {table} WHERE k = $1 FOR UPDATE"
    assert (await q(client, locking, [0])).status_code == 200
    before = await lane(client)
    locked = await asyncio.gather(*(q(client, locking, [i]) for i in range(20)))
    assert [a.json()["rows"] for a in locked] == [[[i]] for i in range(20)]
    assert (await lane(client))["statements"] == before["statements"]


async def test_a_write_waiting_for_a_lock_holds_up_no_neighbour(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    table = fresh_table(pair, "id int PRIMARY KEY, n int")
    as_owner(pair, f"INSERT INTO {table} SELECT g, 0 FROM generate_series(1, 40) g")
    bump = f"UPDATE {table} SET n = n + 1 WHERE id = $1 RETURNING n"
    await warm(client, bump, [40])
    with pair.primary.connect() as locker:  # holds row 1 until released
        locker.autocommit = False
        locker.execute(f"SET ROLE {OWNER}")
        locker.execute(f"UPDATE {table} SET n = 100 WHERE id = 1")
        before = await lane(client)
        waiting = asyncio.ensure_future(q(client, bump, [1]))
        started = time.monotonic()
        neighbours = await asyncio.gather(*(q(client, bump, [i]) for i in range(2, 40)))
        # (each neighbour answered while row 1 stayed locked: none waited behind it)
        assert time.monotonic() - started < 5
        assert [a.json()["rows"] for a in neighbours] == [[[1]]] * 38
        assert not waiting.done()
        locker.commit()
    answer = await waiting
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"] == [[101]]  # it ran once, after the lock was released
    assert (await lane(client))["statements"] - before["statements"] >= 38


async def test_a_failing_statement_leaves_its_batch_neighbours_alone(
    client: httpx.AsyncClient,
) -> None:
    sql = "SELECT 100 / $1::int AS quotient"
    await warm(client, sql, [1])
    before = await lane(client)

    answers = await asyncio.gather(*(q(client, sql, [i % 5]) for i in range(100)))

    for i, answer in enumerate(answers):
        if i % 5 == 0:
            assert answer.status_code == 400, answer.text
            assert answer.json()["sqlstate"] == "22012"
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json()["rows"] == [[100 // (i % 5)]]
    after = await lane(client)
    assert after["batches"] - before["batches"] < after["statements"] - before["statements"]


async def test_row_limits_and_object_rows_hold_in_the_lane(client: httpx.AsyncClient) -> None:
    sql = "SELECT g AS n FROM generate_series(1, $1::int) g"
    await warm(client, sql, [2])
    before = await lane(client)

    answers = await asyncio.gather(
        *(q(client, sql, [10 + i], max_rows=3, row_format="object") for i in range(40))
    )

    for answer in answers:
        body = answer.json()
        assert body["rows"] == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert body["truncated"] is True
        assert body["row_count"] == 3
    assert (await lane(client))["statements"] - before["statements"] == 40


async def test_slow_statements_and_session_changes_keep_a_connection_of_their_own(
    client: httpx.AsyncClient,
) -> None:
    slow = "SELECT pg_sleep(0.02), $1::int AS n"
    changes = "SELECT set_config('search_path', $1, false) AS path"
    assert (await q(client, slow, [0])).status_code == 200
    assert (await q(client, changes, ["pg_catalog"])).status_code == 200
    before = await lane(client)

    answers = await asyncio.gather(
        *(q(client, slow, [i]) for i in range(8)),
        *(q(client, changes, ["pg_catalog"]) for _ in range(8)),
    )

    assert [a.status_code for a in answers] == [200] * 16
    assert (await lane(client))["statements"] == before["statements"]
    # The session change did not outlive its request on any pooled connection.
    shown = await asyncio.gather(*(q(client, "SHOW search_path") for _ in range(8)))
    assert {a.json()["rows"][0][0] for a in shown} == {'"$user", public'}


async def test_waiting_beyond_the_limit_is_refused_at_once(pair: LocalPair) -> None:
    async with serving_ready(
        settings_for(pair, pool_max_size=1, pool_max_waiting=10, multiplex_quick_ms=15)
    ) as (
        _,
        client,
    ):
        sql = "SELECT $1::int AS n"
        await warm(client, sql, [1])

        answers = await asyncio.gather(*(q(client, sql, [i]) for i in range(200)))

        refused = [a for a in answers if a.status_code == 503]
        assert refused, "200 requests at once, 10 may wait: some must be refused"
        assert all(a.headers["retry-after"] == "1" for a in refused)
        assert all("waiting" in a.json()["detail"] for a in refused)
        served = [(i, a) for i, a in enumerate(answers) if a.status_code == 200]
        assert len(served) + len(refused) == 200
        assert all(a.json()["rows"] == [[i]] for i, a in served)


async def test_prepared_statements_dropped_under_the_lane_are_prepared_again(
    pair: LocalPair,
) -> None:
    # One connection, so the DEALLOCATE ALL (through a function of the schema's that runs
    # the SQL it is handed: sent directly, it is refused) lands where the lane prepared its
    # statements.
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION run_sql(q text) RETURNS int LANGUAGE plpgsql"
        " AS $$ BEGIN EXECUTE q; RETURN 1; END $$",
    )
    async with serving_ready(settings_for(pair, pool_max_size=1, multiplex_quick_ms=15)) as (
        _,
        client,
    ):
        sql = "SELECT $1::int * 2 AS doubled"
        await warm(client, sql, [1])
        first = await asyncio.gather(*(q(client, sql, [i]) for i in range(20)))
        assert [a.json()["rows"] for a in first] == [[[i * 2]] for i in range(20)]

        dropped = await q(client, "SELECT run_sql('DEALLOCATE ALL')")
        assert dropped.status_code == 200, dropped.text

        again = await asyncio.gather(*(q(client, sql, [i]) for i in range(20)))
        assert [a.status_code for a in again] == [200] * 20
        assert [a.json()["rows"] for a in again] == [[[i * 2]] for i in range(20)]


async def test_a_schema_change_reaches_statements_prepared_before_it(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    # A prepared `SELECT *` is planned for the table as it was; after ALTER TABLE the
    # server refuses to run it (0A000) and the lane prepares it anew.
    table = fresh_table(pair, "id int PRIMARY KEY")
    assert (await q(client, f"INSERT INTO {table} VALUES (1), (2)")).status_code == 200
    sql = f"SELECT * FROM {table} WHERE id = $1"
    await warm(client, sql, [1])
    for _ in range(3):  # prepared on every pooled connection
        await asyncio.gather(*(q(client, sql, [i % 2 + 1]) for i in range(20)))

    as_owner(pair, f"ALTER TABLE {table} ADD COLUMN label text")

    answers = await asyncio.gather(*(q(client, sql, [1]) for _ in range(20)))
    assert [a.status_code for a in answers] == [200] * 20, answers[0].text
    assert all(a.json()["rows"] == [[1, None]] for a in answers)


async def test_a_frozen_server_cannot_hold_multiplexed_requests(make_pair: PairFactory) -> None:
    own = make_pair(mirrors=0)
    settings = settings_for(own, pool_max_size=2, statement_timeout_ms=500, multiplex_quick_ms=15)
    async with serving_ready(settings) as (_, client):
        sql = "SELECT $1::int AS n"
        await warm(client, sql, [1])
        assert [
            a.status_code for a in await asyncio.gather(*(q(client, sql, [i]) for i in range(20)))
        ] == [200] * 20
        own.primary.freeze()
        try:
            started = time.monotonic()
            answers = await asyncio.gather(*(q(client, sql, [i]) for i in range(20)))
            elapsed = time.monotonic() - started
        finally:
            own.primary.thaw()
        # Each request's deadline is its timeout plus one second of grace.
        assert elapsed < 3.0, elapsed
        assert {a.status_code for a in answers} <= {503, 504}, [a.text for a in answers]


async def neon_sql(client: httpx.AsyncClient, sql: str, params: list[Any]) -> httpx.Response:
    """POST /sql as Neon's driver sends it (array mode, values as PostgreSQL's text)."""
    return await client.post(
        "/sql",
        json={"query": sql, "params": params},
        headers={"Neon-Array-Mode": "true", "Neon-Raw-Text-Output": "true"},
    )


async def test_sql_reads_share_the_lanes_each_under_its_own_styles(
    client: httpx.AsyncClient,
) -> None:
    # POST /sql answers in PostgreSQL's default styles, /v1/query in ISO 8601: in one batch
    # each statement's styles are local to its own Sync.
    sql = "SELECT $1::int * interval '1 day 02:03:04' AS i, current_setting('IntervalStyle') AS s"

    async def sql_in_lane() -> bool:
        before = (await lane(client))["statements"]
        answer = await neon_sql(client, sql, ["1"])
        assert answer.status_code == 200, answer.text
        return bool((await lane(client))["statements"] > before)

    await eventually(sql_in_lane, "the /sql statement to join the lane", timeout=20)
    await warm(client, sql, [1])
    before = await lane(client)
    answers = await asyncio.gather(
        *(neon_sql(client, sql, [str(n)]) if n % 2 else q(client, sql, [n]) for n in range(1, 41))
    )
    for n, answer in enumerate(answers, start=1):
        assert answer.status_code == 200, answer.text
        h, rest = divmod(7384 * n, 3600)
        m, s = divmod(rest, 60)
        if n % 2:
            days = "1 day" if n == 1 else f"{n} days"
            assert answer.json()["rows"] == [[f"{days} {h:02d}:{m:02d}:{s:02d}", "postgres"]]
        else:
            time_part = "".join(f"{v}{unit}" for v, unit in ((h, "H"), (m, "M"), (s, "S")) if v)
            assert answer.json()["rows"] == [[f"P{n}DT{time_part}", "iso_8601"]]
    after = await lane(client)
    assert after["statements"] - before["statements"] >= 30
    assert after["largest_batch"] > 1


# --- writes: what each one's request is told is true ----------------------------------

SLEEPING_INSERT = "INSERT INTO {} (tag) SELECT $1::text FROM pg_sleep($2::float8) RETURNING tag"


def active(pair: LocalPair, like: str) -> list[int]:
    """Backends of the service running a statement like `like` (their pids)."""
    with pair.primary.connect() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND state = 'active'"
            " AND query LIKE %s AND pid <> pg_backend_pid()",
            [SERVICE, like],
        ).fetchall()
    return [int(r[0]) for r in rows]


def tagged(pair: LocalPair, table: str, tag: str) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE tag = %s", [tag]).fetchone()
    return int(row[0]) if row else 0


def terminate(pair: LocalPair, pids: list[int]) -> None:
    with pair.primary.connect() as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])


async def test_a_write_not_sent_by_its_deadline_is_dropped_and_never_runs(
    pair: LocalPair,
) -> None:
    table = fresh_table(pair, "tag text")
    insert = SLEEPING_INSERT.format(table)
    settings = settings_for(
        pair, pool_max_size=1, pool_timeout=10, statement_timeout_ms=500, multiplex_quick_ms=15
    )
    async with serving_ready(settings) as (_, client):
        await warm(client, insert, ["warm", 0])
        before = await lane(client)
        # A transaction with a longer timeout of its own holds the pool's only connection:
        # the lane's runner waits for it, and the write waits in the lane.
        holder = asyncio.ensure_future(
            client.post(
                "/v1/transaction",
                json={
                    "statements": [{"sql": "SELECT pg_sleep(2.5) AS holds_the_pool"}],
                    "timeout_ms": 4000,
                },
            )
        )
        await eventually(lambda: bool(active(pair, "%holds_the_pool%")), "the holder to run")
        started = time.monotonic()
        answer = await q(client, insert, ["late", 0])
        elapsed = time.monotonic() - started
        assert answer.status_code == 504, answer.text
        assert answer.json()["sqlstate"] == "57014"
        assert elapsed < 0.5 + 1.0 + 0.5, elapsed  # its deadline: 500 ms + 1 s of grace
        assert (await holder).status_code == 200
        # The lane ran on once the connection was free: the dropped write was not sent.
        assert (await q(client, insert, ["after", 0])).status_code == 200
        assert tagged(pair, table, "after") == 1
        assert tagged(pair, table, "late") == 0
        assert (await lane(client))["statements"] - before["statements"] == 1


async def test_a_write_whose_lane_connection_is_lost_after_it_was_sent_is_outcome_unknown(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    table = fresh_table(pair, "tag text")
    insert = SLEEPING_INSERT.format(table)
    read = "SELECT $1::int AS n"
    await warm(client, insert, ["warm", 0])
    await warm(client, read, [1])
    before = await lane(client)
    writing = asyncio.ensure_future(q(client, insert, ["lost", 30]))
    pids = await asyncio.wait_for(_running(pair, f"%{table}%"), 10)
    # Reads queued behind it in the same lane are answered too, from another batch or as
    # failed: nothing waits on the lost connection.
    reads = asyncio.ensure_future(asyncio.gather(*(q(client, read, [i]) for i in range(8))))
    terminate(pair, pids)
    started = time.monotonic()
    answer = await asyncio.wait_for(writing, 10)
    assert time.monotonic() - started < 3
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["type"] == "urn:mirrorpool:problem:outcome-unknown"
    assert body["retryable"] is False
    assert "may or may not have committed" in body["detail"]
    assert "retry-after" not in answer.headers
    read_answers = await asyncio.wait_for(reads, 10)
    assert all(a.status_code in (200, 503) for a in read_answers), [a.text for a in read_answers]
    assert [a.json()["rows"] for a in read_answers if a.status_code == 200] == [
        [[i]] for i, a in enumerate(read_answers) if a.status_code == 200
    ]
    assert (await lane(client))["statements"] > before["statements"]
    # (it was terminated before its commit: the server undid it, as the answer allowed)
    assert tagged(pair, table, "lost") == 0
    # The lane serves the key's next writes on a new connection.
    assert (await q(client, insert, ["next", 0])).status_code == 200
    assert tagged(pair, table, "next") == 1


async def test_a_plain_write_whose_connection_is_lost_is_outcome_unknown_too(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    # Never quick (its first run sleeps): it keeps a pooled connection of its own.
    table = fresh_table(pair, "tag text")
    insert = SLEEPING_INSERT.format(table)
    before = await lane(client)
    writing = asyncio.ensure_future(q(client, insert, ["lost", 30]))
    pids = await asyncio.wait_for(_running(pair, f"%{table}%"), 10)
    terminate(pair, pids)
    answer = await asyncio.wait_for(writing, 10)
    assert answer.status_code == 503, answer.text
    assert answer.json()["type"] == "urn:mirrorpool:problem:outcome-unknown"
    assert answer.json()["retryable"] is False
    assert (await lane(client))["statements"] == before["statements"]
    # A read whose connection is lost is no write: it is answered as before (here, retried
    # or told the node failed, retryable).
    reading = asyncio.ensure_future(q(client, "SELECT pg_sleep(1.5), 'read' AS lost_read"))
    pids = await asyncio.wait_for(_running(pair, "%lost_read%"), 10)
    terminate(pair, pids)
    read_answer = await asyncio.wait_for(reading, 10)
    if read_answer.status_code != 200:
        assert read_answer.json()["type"] == "urn:mirrorpool:problem:node-failed", read_answer.text


async def _running(pair: LocalPair, like: str) -> list[int]:
    pids: list[int] = []

    def found() -> bool:
        pids[:] = active(pair, like)
        return bool(pids)

    await eventually(found, f"a statement like {like} to run")
    return pids


async def test_lane_writes_leave_no_timeout_of_their_own_behind(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    table = fresh_table(pair, "tag text")
    insert = SLEEPING_INSERT.format(table)
    await warm(client, insert, ["warm", 0])
    answers = await asyncio.gather(*(q(client, insert, [f"t{i}", 0]) for i in range(40)))
    assert [a.status_code for a in answers] == [200] * 40
    shown = await asyncio.gather(
        *(q(client, "SELECT current_setting('statement_timeout') AS s,"
                    " current_setting('lock_timeout') AS l,"
                    " coalesce(current_setting('mirrorpool.lane_batch', true), '') AS b")
          for _ in range(8))
    )  # fmt: skip
    # (nor whether or when the lanes' last batch of writes ran there: every connection
    # starts with the lanes' clock at 0, and a batch puts it back)
    assert {tuple(a.json()["rows"][0]) for a in shown} == {("30s", "5s", "0")}


async def test_behind_pgbouncer_writes_take_no_lane(pair: LocalPair, work_dir: Path) -> None:
    table = fresh_table(pair, "k int UNIQUE")
    insert = f"INSERT INTO {table} (k) VALUES ($1) RETURNING k"
    with LocalPgBouncer(pair, work_dir / f"mux-bouncer-{uuid.uuid4().hex[:6]}") as bouncer:
        settings = settings_for(
            pair,
            primary_dsn=bouncer.dsn("postgres", user=SERVICE),
            mirror_dsn=None,
            pgbouncer=True,
            migrations_dsn=pair.primary.dsn("postgres", user=OWNER),
            health_threshold=3,
            multiplex_quick_ms=15,
        )
        assert settings.multiplex_writes  # (the default)
        async with serving_ready(settings) as (_, behind):
            for i in range(5):  # as often as a lane would need to take it
                assert (await q(behind, insert, [-i - 1])).status_code == 200
            answers = await asyncio.gather(*(q(behind, insert, [i % 20]) for i in range(40)))
            stats = (await behind.get("/pool/stats")).json()
    assert sorted(a.json()["rows"][0][0] for a in answers if a.status_code == 200) == list(
        range(20)
    )
    assert {a.json()["sqlstate"] for a in answers if a.status_code != 200} == {"23505"}
    primary = next(n for n in stats["nodes"] if n["name"] == "primary")
    assert primary["multiplexing"] is None


async def test_a_frozen_server_cannot_hold_lane_writes_nor_make_them_lie(
    make_pair: PairFactory,
) -> None:
    own = make_pair(mirrors=0)
    as_owner(own, "CREATE TABLE frozen_notes (tag text)")
    insert = "INSERT INTO frozen_notes (tag) VALUES ($1) RETURNING tag"
    settings = settings_for(own, pool_max_size=2, statement_timeout_ms=500, multiplex_quick_ms=15)
    async with serving_ready(settings) as (_, client):
        await warm(client, insert, ["warm"])
        own.primary.freeze()
        try:
            started = time.monotonic()
            answers = await asyncio.gather(*(q(client, insert, [f"f{i}"]) for i in range(20)))
            elapsed = time.monotonic() - started
        finally:
            own.primary.thaw()
        # Sent ones: the batch's connection is shut after 0.5 s + 1 s without an answer, or
        # when the node is found down; those still waiting in the lane fail then too.
        assert elapsed < 3.0, elapsed
        kinds = [a.json()["type"].rsplit(":", 1)[-1] for a in answers]
        assert set(kinds) <= {"outcome-unknown", "timeout", "node-failed"}, kinds
        assert "outcome-unknown" in kinds  # (the first were sent before the freeze was seen)
        with own.primary.connect() as conn:
            rows = conn.execute("SELECT tag FROM frozen_notes").fetchall()
        committed = {r[0] for r in rows}
        for i, (kind, answer) in enumerate(zip(kinds, answers, strict=True)):
            if kind != "outcome-unknown":  # told it timed out or failed: it never ran
                assert f"f{i}" not in committed, answer.text
            else:
                assert answer.json()["retryable"] is False


def test_no_text_longer_than_the_parse_cache_keeps_is_remembered() -> None:
    # A read key sending distinct quick reads of 100,000 characters would otherwise keep
    # MAX_KNOWN of them (some 400 MB): past CACHEABLE_LENGTH a text never joins a lane.
    known = Known(SchemaWatch.fixed(schema_code.NOTHING))
    short = "SELECT 1"
    long = "SELECT 1 -- " + "x" * CACHEABLE_LENGTH
    for sql in (short, long):
        known.observe("read", parse(sql), sql, 0.0001)
    assert known.quick("read", parse(short), short)
    assert not known.quick("read", parse(long), long)
