"""Pipelined execution on one connection (app/sql/pipeline): units on their own, rows kept
to max_rows + 1 and the bytes allowed, a read over its limit stopped on the server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.cluster.cluster import Cluster
from app.devdb import LocalPair
from app.sql import pipeline
from app.sql.checkout import Checkout
from app.sql.pipeline import Allowance, Command, Keep, sending, syncing
from app.sql.session import Effect
from tests.pgbouncer import LocalPgBouncer
from tests.unit.conftest import backend_alive, checkouts_of

MANY = "SELECT g FROM generate_series(1, 2000000) AS g"


async def scalar(held: Checkout, sql: str) -> Any:
    cur = await held.conn.execute(sql)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
async def held(cluster: Cluster) -> Any:
    async with checkouts_of(cluster).session(cluster.pick("write")) as checkout:
        yield checkout


async def test_a_read_stops_at_max_rows_plus_one_on_the_server(held: Checkout) -> None:
    keep = Keep(11, Allowance(1 << 20), stop=True)
    (unit,) = await pipeline.run_units(held.conn, [[Command(MANY, keep=keep)]])
    (reply,) = unit.replies
    assert reply.error is None
    assert [row[0] for row in reply.rows] == list(range(1, 12))
    assert reply.cut and reply.stopped
    # Cancelled on the server long before its two million rows were all sent.
    assert reply.seen < 200_000
    assert reply.command == f"SELECT {reply.seen}"
    # The connection is idle and usable after the cancel.
    assert await scalar(held, "SELECT 7") == 7


async def test_a_write_over_its_limit_runs_whole(held: Checkout) -> None:
    held.mark(Effect.CLOSE)  # a temporary table: not for the next user of the connection
    await held.conn.execute("CREATE TEMP TABLE written (n int)")
    insert = "INSERT INTO written SELECT g FROM generate_series(1, 5000) AS g RETURNING n"
    keep = Keep(11, Allowance(1 << 20), stop=False)
    (unit,) = await pipeline.run_units(held.conn, [[Command(insert, keep=keep)]])
    (reply,) = unit.replies
    assert len(reply.rows) == 11 and reply.cut and not reply.stopped
    assert reply.seen == 5000
    assert reply.command == "INSERT 0 5000"
    assert await scalar(held, "SELECT count(*) FROM written") == 5000


async def test_rows_are_kept_within_the_bytes_allowed(held: Checkout) -> None:
    allowance = Allowance(200)
    keep = Keep(1000, allowance, stop=True)
    sql = "SELECT repeat('x', 40) FROM generate_series(1, 100)"
    (unit,) = await pipeline.run_units(held.conn, [[Command(sql, keep=keep)]])
    (reply,) = unit.replies
    assert 0 < len(reply.rows) < 10 and reply.cut
    assert allowance.bytes < 200


async def test_each_unit_succeeds_or_fails_on_its_own(held: Checkout) -> None:
    keep = Keep(10)
    units = await pipeline.run_units(
        held.conn,
        [
            [Command("SELECT 1", keep=keep)],
            [Command("SELECT 1 / 0", keep=keep)],
            [Command("SELECT $1::int * 2", [21], keep=keep)],
        ],
    )
    first, failed, third = (u.replies[0] for u in units)
    assert first.rows == [(1,)]
    assert failed.error is not None and failed.error.sqlstate == "22012"
    assert third.rows == [(42,)]


async def test_an_error_stops_the_rest_of_its_unit_only(held: Checkout) -> None:
    keep = Keep(10)
    units = await pipeline.run_units(
        held.conn,
        [
            [Command("SELECT 1 / 0", keep=keep), Command("SELECT 2", keep=keep)],
            [Command("SELECT 3", keep=keep)],
        ],
    )
    broken, after = units[0].replies
    assert broken.error is not None and broken.error.sqlstate == "22012"
    assert after.error is not None  # not run: the server skipped it
    assert units[1].replies[0].rows == [(3,)]


async def test_a_text_run_twice_is_prepared_and_answers_the_same(held: Checkout) -> None:
    command = [Command("SELECT $1::int + 1", [1], keep=Keep(10))]
    first = await pipeline.run_units(held.conn, [command])
    second = await pipeline.run_units(held.conn, [command])
    assert first[0].replies[0].rows == second[0].replies[0].rows == [(2,)]
    state = pipeline.state_of(held.conn)
    assert any(key[0] == "SELECT $1::int + 1" for key in state.prepared)
    assert await scalar(held, "SELECT count(*) FROM pg_prepared_statements") == 1


async def test_a_batch_of_queued_syncs_goes_out_whole(held: Checkout) -> None:
    # Every unit's Sync is queued with libpq's PQsendPipelineSync (psycopg's libpq here is
    # 17 or later) and the batch is flushed once as the reading starts: large parameters
    # (past libpq's own flush threshold) and small ones, each unit answered on its own.
    assert syncing._send_sync() is not None
    keep = Keep(10)
    units = [
        [Command("SELECT length($1::text), $2::int", ["x" * (n * 20_000), n], keep=keep)]
        for n in range(16)
    ]
    units[7] = [Command("SELECT 1 / 0", keep=keep)]
    replies = [u.replies[0] for u in await pipeline.run_units(held.conn, units)]
    for n, reply in enumerate(replies):
        if n == 7:
            assert reply.error is not None and reply.error.sqlstate == "22012"
        else:
            assert reply.error is None and reply.rows == [(n * 20_000, n)]
    assert await scalar(held, "SELECT 7") == 7


async def test_past_the_bound_the_oldest_names_give_way(held: Checkout) -> None:
    # More texts than a connection keeps names for, each run again: the newest are prepared
    # (the oldest deallocated on the server after the run, those this batch was still using
    # too), every statement answers its own rows, and the server never holds many more names
    # than the bound.
    bound = sending.MAX_PREPARED
    texts = [f"SELECT {n} AS n" for n in range(bound + 44)]
    units = [[Command(text, keep=Keep(2))] for text in texts]
    state = pipeline.state_of(held.conn)
    count = r"SELECT count(*) FROM pg_prepared_statements WHERE name LIKE '\_mp\_%'"
    for run in range(4):
        replies = [u.replies[0] for u in await pipeline.run_units(held.conn, units)]
        assert [r.rows for r in replies] == [[(n,)] for n in range(len(texts))], run
        assert len(state.prepared) <= bound
        on_server = await scalar(held, count)
        assert on_server == len(state.prepared) + len(state.retired)
        assert on_server <= bound + sending.RETIRE_BATCH
    assert len(state.prepared) == bound
    # Another text, run twice, still gets a name of its own.
    other = [[Command("SELECT $1::int AS other", [5], keep=Keep(2))]]
    for _ in range(2):
        assert (await pipeline.run_units(held.conn, other))[0].replies[0].rows == [(5,)]
    assert "SELECT $1::int AS other" in {key[0] for key in state.prepared}
    # A reset forgets the names given up too (DISCARD ALL dropped them on the server).
    await held.conn.execute("DISCARD ALL")
    pipeline.forget_prepared(held.conn)
    assert not state.prepared and not state.retired
    replies = [u.replies[0] for u in await pipeline.run_units(held.conn, units[:2] * 2)]
    assert [r.rows for r in replies] == [[(0,)], [(1,)]] * 2


async def test_a_long_text_is_neither_prepared_nor_counted(held: Checkout) -> None:
    # A connection counts the uses of 1,024 texts: of 100,000 characters each, that would
    # be 100 MB per connection. Past PREPARED_LENGTH a text runs unnamed, and nothing of it
    # stays; the characters counted stay within MAX_SEEN_CHARS.
    state = pipeline.state_of(held.conn)
    long = "SELECT 7 AS n -- " + "x" * sending.PREPARED_LENGTH
    for _ in range(3):
        (unit,) = await pipeline.run_units(held.conn, [[Command(long, keep=Keep(2))]])
        assert unit.replies[0].rows == [(7,)]
    assert all(key[0] != long for key in [*state.seen, *state.prepared])
    padding = "x" * (sending.PREPARED_LENGTH - 40)
    for n in range(2 * sending.MAX_SEEN_CHARS // sending.PREPARED_LENGTH):
        command = Command(f"SELECT {n} AS n -- {padding}", keep=Keep(2))
        (unit,) = await pipeline.run_units(held.conn, [[command]])
        assert unit.replies[0].rows == [(n,)]
        assert sum(len(key[0]) for key in state.seen) <= sending.MAX_SEEN_CHARS


# A FATAL error in a statement, and in place of a unit's Sync (its implicit commit: a
# deferred foreign key's check).
FATAL_UNITS = {
    "division by zero": [[Command("SELECT 1/0")]],
    "violates foreign key constraint": [
        [Command("CREATE TEMP TABLE fatal_p (id int PRIMARY KEY)")],
        [
            Command(
                "CREATE TEMP TABLE fatal_c (id int REFERENCES fatal_p DEFERRABLE INITIALLY"
                " DEFERRED)"
            ),
            Command("INSERT INTO fatal_c VALUES (1)"),
        ],
    ],
}


@pytest.mark.parametrize("error", list(FATAL_UNITS), ids=["statement", "commit"])
async def test_a_fatal_error_ends_the_run_and_frees_the_poolers_server_at_once(
    pair: LocalPair, work_dir: Path, error: str
) -> None:
    """After a FATAL error the server answers no Sync, and its backend may live on: one
    with a temporary child of a parent another session holds locked waits at its exit to
    drop it. The run ends at the error, closing the connection, so PgBouncer gives its one
    server connection to its next client at once instead of keeping it for the dying
    backend (a health probe through it failed, and every key was answered 503)."""
    with pair.primary.connect() as conn:
        conn.execute("CREATE TABLE fatal_parent (x int)")
    try:
        with LocalPgBouncer(pair, work_dir / "fatal-bouncer", pool_size=1) as bouncer:
            dying = await psycopg.AsyncConnection.connect(bouncer.dsn(), autocommit=True)
            await dying.execute("CREATE TEMP TABLE fatal_child () INHERITS (public.fatal_parent)")
            cur = await dying.execute("SELECT pg_backend_pid()")
            row = await cur.fetchone()
            assert row is not None
            with pair.primary.connect() as other, other.transaction():
                other.execute("LOCK TABLE fatal_parent IN ACCESS EXCLUSIVE MODE")
                units = [[Command("SET exit_on_error = on")], *FATAL_UNITS[error]]
                started = time.monotonic()
                ended = f"the server ended the session: FATAL: .*{error}"
                with pytest.raises(psycopg.OperationalError, match=ended):
                    async with asyncio.timeout(5):
                        await pipeline.run_units(dying, units)
                assert time.monotonic() - started < 2
                assert dying.closed
                # (the backend lives on, waiting for the lock; the pooler serves the next)
                assert backend_alive(pair, int(row[0]))
                started = time.monotonic()
                with psycopg.connect(bouncer.dsn(), connect_timeout=5) as next_client:
                    next_client.execute("SET statement_timeout = '5s'")
                    assert next_client.execute("SELECT 7").fetchone() == (7,)
                assert time.monotonic() - started < 2
    finally:
        with pair.primary.connect() as conn:
            conn.execute("DROP TABLE IF EXISTS fatal_parent CASCADE")
