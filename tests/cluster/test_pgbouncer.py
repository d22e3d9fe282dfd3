"""mirrorpool through a real PgBouncer in transaction mode (MIRRORPOOL_PGBOUNCER=true).

PgBouncer (tests/pgbouncer.py) sits in front of the shared primary with two server
connections per database, fewer than mirrorpool's pool opens, so every test here runs on
server connections shared with other clients. Migrations go to the primary directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from app.devdb import OWNER, SERVICE, LocalPair, free_ports
from app.settings import Settings
from tests.conftest import as_owner, serving_ready, settings_for
from tests.pgbouncer import LocalPgBouncer, PgBouncerMissing
from tests.waiting import eventually

SERVER_CONNECTIONS = 2  # PgBouncer's pool per database; mirrorpool's pool may open 4
ROUNDS = 16  # well beyond psycopg's prepare_threshold (5)


@pytest.fixture(scope="module")
def bouncer(pair: LocalPair, work_dir: Path) -> Iterator[LocalPgBouncer]:
    """PgBouncer in front of the shared primary; a missing binary fails, it never skips."""
    missing = None
    try:
        pgbouncer = LocalPgBouncer(pair, work_dir / "pgbouncer", pool_size=SERVER_CONNECTIONS)
    except PgBouncerMissing as exc:
        missing = str(exc)
    if missing is not None:
        pytest.fail(missing, pytrace=False)
    with pgbouncer:
        yield pgbouncer


def through(pair: LocalPair, bouncer: LocalPgBouncer, database: str, **overrides: Any) -> Settings:
    """Settings for mirrorpool behind PgBouncer, migrations on the primary directly."""
    values: dict[str, Any] = {
        "primary_dsn": bouncer.dsn(database, user=SERVICE),
        "mirror_dsn": None,
        "pgbouncer": True,
        "migrations_dsn": pair.primary.dsn(database, user=OWNER),
        "pool_min_size": 1,
        "pool_max_size": 4,
        "health_threshold": 3,
    }
    return settings_for(pair, **(values | overrides))


def serve(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str, **overrides: Any
) -> AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]:
    return serving_ready(through(pair, bouncer, database, **overrides))


async def connect(bouncer: LocalPgBouncer, database: str) -> psycopg.AsyncConnection[Any]:
    """Another client of PgBouncer, next to mirrorpool, sharing its server connections (the
    same database and login; psycopg's defaults: it prepares)."""
    return await psycopg.AsyncConnection.connect(bouncer.dsn(database, SERVICE), autocommit=True)


async def query(client: httpx.AsyncClient, sql: str, params: Any = None, **extra: Any) -> Any:
    response = await client.post("/v1/query", json={"sql": sql, "params": params, **extra})
    assert response.status_code == 200, response.text
    return response.json()


async def test_health_and_both_parameter_styles(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str
) -> None:
    async with serve(pair, bouncer, database) as (_, client):
        health = (await client.get("/health")).json()
        assert health["status"] == "ok", health
        assert [(n["name"], n["role"]) for n in health["nodes"]] == [("primary", "primary")]
        positional = await query(client, "SELECT $1::int + 1 AS n, $2::text AS s", [41, "x"])
        assert positional["rows"] == [[42, "x"]]
        named = await query(
            client,
            "SELECT :a::int * 2 AS twice, :b::text AS b, ':a' AS literal",
            {"a": 21, "b": "y"},
            row_format="object",
        )
        assert named["rows"] == [{"twice": 42, "b": "y", "literal": ":a"}]
        read_only = await query(client, "SELECT 1 AS one", read_only=True)
        assert (read_only["rows"], read_only["node"]) == ([[1]], "primary")


async def test_without_the_setting_health_names_what_pgbouncer_refused(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str
) -> None:
    async with serve(pair, bouncer, database, pgbouncer=False) as (_, client):
        health = await client.get("/health")
    assert health.status_code == 503
    assert "unsupported startup parameter: options" in " ".join(health.json()["reasons"])


async def test_pool_connections_share_fewer_server_connections(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str
) -> None:
    async with serve(pair, bouncer, database, pool_min_size=4) as (app, client):
        node = app.state.cluster.nodes[0]
        await eventually(lambda: node.pool.get_stats()["pool_size"] == 4, "4 pool connections")
        responses = await asyncio.gather(
            *(
                client.post(
                    "/v1/query", json={"sql": "SELECT pg_sleep(0.05), $1::int", "params": [i]}
                )
                for i in range(8)
            )
        )
        for response in responses:
            assert response.status_code == 200, response.text
        clients = [c for c in bouncer.admin("SHOW CLIENTS") if c["database"] == database]
        servers = [s for s in bouncer.admin("SHOW SERVERS") if s["database"] == database]
    assert len(clients) >= 4  # the pool's, and the monitor's
    assert 1 <= len(servers) <= SERVER_CONNECTIONS


async def alternate_servers(
    run: Callable[[int], Awaitable[int]], bouncer: LocalPgBouncer, database: str
) -> set[int]:
    """Run `run(i)` ROUNDS times, each time on another server connection than the last.

    PgBouncer hands out the most recently used idle server connection (LIFO). After each
    run another client takes exactly that one into a transaction, so the next run gets the
    other; the holder of the one before lets go. Returns the backend pids seen.
    """
    holders = [await connect(bouncer, database), await connect(bouncer, database)]
    pids = set()
    try:
        for i in range(ROUNDS):
            pids.add(await run(i))
            holder, previous = holders[i % 2], holders[(i + 1) % 2]
            await holder.execute("BEGIN")
            await holder.execute("SELECT 1")
            if previous.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await previous.execute("COMMIT")
    finally:
        for holder in holders:
            await holder.close()
    return pids


async def test_a_client_that_prepares_statements_breaks_behind_this_pooler(
    bouncer: LocalPgBouncer, database: str
) -> None:
    """The scenario below is one a preparing client cannot survive: it would catch a
    mirrorpool that prepared statements."""
    conn = await connect(bouncer, database)
    assert conn.prepare_threshold is not None  # psycopg's default: prepare the 6th time

    async def run(i: int) -> int:
        cur = await conn.execute("SELECT pg_backend_pid(), %s::int", [i])
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    try:
        with pytest.raises(psycopg.errors.InvalidSqlStatementName, match="does not exist"):
            await alternate_servers(run, bouncer, database)
    finally:
        await conn.close()


async def test_the_same_statement_many_times_on_shared_server_connections(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str
) -> None:
    # A slow monitor, so its probes do not reorder PgBouncer's idle server connections.
    async with serve(pair, bouncer, database, health_interval=30) as (_, client):

        async def run(i: int) -> int:
            body = await query(client, "SELECT pg_backend_pid() AS pid, $1::int AS i", [i])
            assert body["rows"][0][1] == i
            return int(body["rows"][0][0])

        pids = await alternate_servers(run, bouncer, database)
    assert len(pids) == SERVER_CONNECTIONS


# Session settings another client of PgBouncer leaves on every server connection, on top
# of database defaults unlike mirrorpool's: what a pooled session may carry.
FOREIGN_DEFAULTS = {
    "TimeZone": "America/New_York",
    "DateStyle": "SQL, DMY",
    "IntervalStyle": "postgres",
    "bytea_output": "escape",
    "extra_float_digits": "0",
}
LEFT_BEHIND = {
    "TimeZone": "Asia/Kolkata",
    "DateStyle": "German",
    "IntervalStyle": "sql_standard",
    "bytea_output": "escape",
    "extra_float_digits": "-3",
    "statement_timeout": "0",
}
ENCODED_SQL = (
    "SELECT timestamptz '2024-05-01 09:30:00+00' AS tstz, timestamp '2024-05-01 09:30' AS ts, "
    "date '2024-05-01' AS d, interval '1 day 2 hours' AS iv, '\\x0102'::bytea AS b, "
    "0.1::float8 + 0.2::float8 AS f"
)
ENCODED_ROW = [
    "2024-05-01T09:30:00+00:00",
    "2024-05-01T09:30:00",
    "2024-05-01",
    "P1DT2H",
    "AQI=",
    0.30000000000000004,
]


async def leave_settings_on_every_server_connection(bouncer: LocalPgBouncer, database: str) -> None:
    """Two other clients take both server connections at once and SET (session) there."""
    others = [await connect(bouncer, database) for _ in range(SERVER_CONNECTIONS)]
    try:
        for other in others:
            await other.execute("BEGIN")
            await other.execute("SELECT 1")
        pids = set()
        for other in others:
            for name, value in LEFT_BEHIND.items():
                await other.execute(f"SET {name} = '{value}'")
            cur = await other.execute("SELECT pg_backend_pid()")
            pids.add((await cur.fetchone() or [0])[0])
            await other.execute("COMMIT")
        assert len(pids) == SERVER_CONNECTIONS
        # What any client of the pooler now finds in its session, unless it sets its own.
        cur = await others[0].execute("SELECT current_setting('IntervalStyle')")
        assert await cur.fetchone() == ("sql_standard",)
    finally:
        for other in others:
            await other.close()


async def test_answers_stay_right_whatever_other_clients_leave_in_the_sessions(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str
) -> None:
    with pair.primary.connect() as conn:
        for name, value in FOREIGN_DEFAULTS.items():
            conn.execute(f"ALTER DATABASE {database} SET {name} = '{value}'")
    async with serve(pair, bouncer, database, statement_timeout_ms=300, stream_chunk_rows=1000) as (
        _,
        client,
    ):
        await leave_settings_on_every_server_connection(bouncer, database)
        for _ in range(2 * SERVER_CONNECTIONS):
            assert (await query(client, ENCODED_SQL))["rows"] == [ENCODED_ROW]
        read_only = await query(client, ENCODED_SQL, read_only=True)
        assert read_only["rows"] == [ENCODED_ROW]
        transaction = await client.post(
            "/v1/transaction", json={"statements": [{"sql": ENCODED_SQL}, {"sql": "SELECT 1"}]}
        )
        assert transaction.status_code == 200, transaction.text
        assert transaction.json()["results"][0]["rows"] == [ENCODED_ROW]
        stream = await client.post(
            "/v1/query/stream",
            json={"sql": "SELECT g, g * interval '1 minute' FROM generate_series(1, 2500) g"},
        )
        assert stream.status_code == 200, stream.text
        lines = [json.loads(line) for line in stream.text.splitlines()]
        assert lines[1] == [1, "PT1M"]
        assert lines[-2] == [2500, "PT41H40M"]
        assert lines[-1] == {"row_count": 2500, "command": "SELECT 2500", "status": "ok"}

        # The server's statement_timeout (300 ms) ends it, not mirrorpool's deadline (1.3 s).
        started = time.monotonic()
        slow = await client.post("/v1/query", json={"sql": "SELECT pg_sleep(5)"})
        assert slow.status_code == 504, slow.text
        assert slow.json()["sqlstate"] == "57014"
        assert "statement timeout" in slow.json()["database"]["message"]
        assert time.monotonic() - started < 1.2


async def test_transactions_commit_and_roll_back(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str
) -> None:
    async with serve(pair, bouncer, database) as (_, client):
        as_owner(
            pair, "CREATE TABLE accounts (id int PRIMARY KEY, balance numeric)", dbname=database
        )
        committed = await client.post(
            "/v1/transaction",
            json={
                "statements": [
                    {"sql": "INSERT INTO accounts VALUES ($1, $2)", "params": [1, "10.50"]},
                    {
                        "sql": "UPDATE accounts SET balance = balance + :d WHERE id = :id",
                        "params": {"d": "1.25", "id": 1},
                    },
                    {"sql": "SAVEPOINT before_two"},
                    {"sql": "INSERT INTO accounts VALUES (2, 0)"},
                    {"sql": "ROLLBACK TO SAVEPOINT before_two"},
                    {"sql": "SELECT id, balance FROM accounts ORDER BY id"},
                ],
                "isolation": "serializable",
            },
        )
        assert committed.status_code == 200, committed.text
        assert committed.json()["results"][-1]["rows"] == [[1, "11.75"]]
        failed = await client.post(
            "/v1/transaction",
            json={
                "statements": [
                    {"sql": "INSERT INTO accounts VALUES (3, 0)"},
                    {"sql": "INSERT INTO accounts VALUES (1, 0)"},
                ]
            },
        )
        assert failed.status_code == 409, failed.text
        assert (failed.json()["statement_index"], failed.json()["sqlstate"]) == (1, "23505")
        after = await query(client, "SELECT id FROM accounts ORDER BY id")
        assert after["rows"] == [[1]]


async def test_results_over_their_limits_are_cut_and_reads_stopped_on_the_server(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str
) -> None:
    """Behind PgBouncer too, rows are read in chunks and cut at max_rows or the response
    size; a read over its limit is cancelled on the server (through the pooler), and a
    transaction whose middle read was cut still commits its writes."""
    as_owner(pair, "CREATE TABLE cut_log (id int)", dbname=database)
    async with serve(pair, bouncer, database, max_response_bytes=4096) as (_, client):
        marker = f"cut_{os.getpid()}_{time.monotonic_ns()}"
        series = "(SELECT generate_series(1, 20000000) AS g) AS s"
        started = time.monotonic()
        cut = await query(client, f"/* {marker} */ SELECT g FROM {series}", max_rows=3)
        assert time.monotonic() - started < 2
        assert (cut["rows"], cut["truncated"]) == ([[1], [2], [3]], True)
        sized = await query(client, f"SELECT g, repeat('y', 100) FROM {series}", read_only=True)
        assert sized["truncated"] is True
        assert 10 < sized["row_count"] < 40
        with pair.primary.connect(database) as conn:
            running = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s"
                " AND pid <> pg_backend_pid()",
                [f"%{marker}%"],
            ).fetchone()
        assert running == (0,)
        committed = await client.post(
            "/v1/transaction",
            json={
                "statements": [
                    {"sql": "SELECT generate_series(1, 50000) AS g"},
                    {"sql": "INSERT INTO cut_log VALUES (1) RETURNING id"},
                ],
                "max_rows": 2,
            },
        )
        assert committed.status_code == 200, committed.text
        first, insert = committed.json()["results"]
        assert (first["rows"], first["truncated"], first["command"]) == (
            [[1], [2]],
            True,
            "SELECT 50000",
        )
        assert insert["rows"] == [[1]]
        after = await query(client, "SELECT count(*) AS n FROM cut_log")
        assert after["rows"] == [["1"]]


async def test_named_queries(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str, tmp_path: Path
) -> None:
    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "double.sql").write_text(
        "-- params: n\n-- read_only: true\nSELECT :n::int * 2 AS twice, interval '90 minutes'"
    )
    (queries / "count_up.sql").write_text(
        "-- params: name\nINSERT INTO counters (name) VALUES (:name) RETURNING id"
    )
    async with serve(pair, bouncer, database, queries_dir=queries) as (_, client):
        as_owner(pair, "CREATE TABLE counters (id serial PRIMARY KEY, name text)", dbname=database)
        for i in range(ROUNDS):
            double = await client.post("/v1/queries/double", json={"params": {"n": i}})
            assert double.status_code == 200, double.text
            assert double.json()["rows"] == [[2 * i, "PT1H30M"]]
            counted = await client.post("/v1/queries/count_up", json={"params": {"name": "x"}})
            assert counted.status_code == 200, counted.text
            assert counted.json()["rows"] == [[i + 1]]


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("SET search_path = elsewhere", "SET without LOCAL"),
        ("SELECT set_config('app.user', 'ada', false)", "set_config(..., false)"),
        ("SELECT pg_advisory_lock(7)", "pg_advisory_lock() (a session advisory lock)"),
        ("CREATE TEMP TABLE scratch (id int)", "a temporary object (ON COMMIT DROP too)"),
        (
            "CREATE TEMP TABLE scratch (id int) ON COMMIT DROP",
            "a temporary object (ON COMMIT DROP too)",
        ),
        ("SET LOCAL search_path = elsewhere", "setting search_path"),
        ("LISTEN jobs", "LISTEN"),
        ("RESET ALL", "RESET"),
        ("COMMIT", "a transaction control statement"),
    ],
)
async def test_statements_that_would_change_a_shared_session_are_refused(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str, sql: str, what: str
) -> None:
    async with serve(pair, bouncer, database) as (_, client):
        response = await client.post("/v1/query", json={"sql": sql})
        assert response.status_code == 400, response.text
        problem = response.json()
        assert problem["type"] == "urn:mirrorpool:problem:invalid-sql"
        assert problem["detail"].startswith(f"MIRRORPOOL_PGBOUNCER=true refuses {what}: ")
        in_transaction = await client.post(
            "/v1/transaction", json={"statements": [{"sql": "SELECT 1"}, {"sql": sql}]}
        )
        assert in_transaction.status_code == 400
        assert in_transaction.json()["statement_index"] == 1


async def test_transaction_scoped_forms_run(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str
) -> None:
    async with serve(pair, bouncer, database) as (_, client):
        response = await client.post(
            "/v1/transaction",
            json={
                "statements": [
                    {"sql": "SET LOCAL statement_timeout = 5000"},
                    {"sql": "SELECT set_config('lock_timeout', '1234ms', true)"},
                    {"sql": "SELECT pg_advisory_xact_lock(7)"},
                    {"sql": "SELECT current_setting('lock_timeout'), 2::bigint"},
                ]
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["results"][-1]["rows"] == [["1234ms", "2"]]
        after = await query(client, "SELECT current_setting('lock_timeout')")
        assert after["rows"] != [["1234ms"]]  # the setting ended with the transaction
        # A custom setting would stay defined on the server connection for other clients.
        custom = await client.post(
            "/v1/query", json={"sql": "SELECT set_config('app.user', 'ada', true)"}
        )
        assert custom.status_code == 400, custom.text
        assert "setting app.user" in custom.json()["detail"]


async def test_statements_that_cannot_run_in_a_transaction_answer_400(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str
) -> None:
    as_owner(pair, "CREATE TABLE t (id int)", dbname=database)
    async with serve(pair, bouncer, database) as (_, client):
        for sql in ("VACUUM t", "CREATE INDEX CONCURRENTLY t_id ON t (id)"):
            response = await client.post("/v1/query", json={"sql": sql})
            assert response.status_code == 400, response.text
            assert response.json()["sqlstate"] == "25001"


async def test_no_session_reset_reaches_shared_server_connections(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str
) -> None:
    """A function of the database's own would make mirrorpool reset its session (DISCARD
    ALL) on a connection of its own; through the pooler that would hit someone else's: the
    statements PgBouncer prepared on the server connection by protocol for its clients. What
    the code may have left is undone piece by piece instead, the statements SQL PREPAREd
    among them, and nothing that drops PgBouncer's (app/sql/pgbouncer.py finish)."""
    as_owner(pair, "CREATE FUNCTION noop() RETURNS int LANGUAGE sql AS 'SELECT 1'", dbname=database)
    # A slow monitor, so no probe runs on the server connection after the statement.
    async with serve(pair, bouncer, database, health_interval=30) as (_, client):
        await query(client, "SELECT noop()")
        with pair.primary.connect(database) as conn:
            last = conn.execute(
                "SELECT query FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
    assert last  # PgBouncer's server connections, each with the last statement it ran
    assert not [q for (q,) in last if "DISCARD ALL" in q or "DEALLOCATE ALL" in q]


def write_migrations(folder: Path) -> None:
    folder.mkdir()
    (folder / "0001_items.up.sql").write_text("CREATE TABLE items (id int PRIMARY KEY);\n")
    (folder / "0001_items.down.sql").write_text("DROP TABLE items;\n")
    (folder / "0002_items_id.up.sql").write_text(
        "-- mirrorpool: no-transaction\nCREATE INDEX CONCURRENTLY items_id ON items (id);\n"
    )


async def test_migrations_run_on_the_direct_dsn_while_queries_go_through_pgbouncer(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    write_migrations(folder)
    async with serve(pair, bouncer, database, migrations_dir=folder) as (_, client):
        applied = await client.post("/v1/migrations/apply", json={})
        assert applied.status_code == 200, applied.text
        assert [s["status"] for s in applied.json()["steps"]] == ["done", "done"]
        status = (await client.get("/v1/migrations")).json()
        assert (status["current_version"], status["pending"]) == ("2", 0)
        inserted = await query(client, "INSERT INTO items VALUES ($1), ($2)", [1, 2])
        assert inserted["rows_affected"] == 2
        rolled = await client.post("/v1/migrations/rollback", json={"target": 1})
        assert rolled.status_code == 409  # 0002 has no down file: refused before anything ran


async def test_migrations_never_fall_back_to_the_pooler(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    write_migrations(folder)
    secret = "not-the-password-" + os.urandom(4).hex()
    nowhere = f"host=127.0.0.1 port={free_ports(1)[0]} user=postgres password={secret}"
    async with serve(pair, bouncer, database, migrations_dir=folder, migrations_dsn=nowhere) as (
        _,
        client,
    ):
        refused = await client.post("/v1/migrations/apply", json={})
        assert refused.status_code == 503, refused.text
        assert refused.json()["detail"].startswith("migrations cannot connect to migrations_dsn:")
        assert secret not in refused.text
        assert (await query(client, "SELECT 1 AS up"))["rows"] == [[1]]


def test_cli_migrates_through_the_direct_dsn(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    write_migrations(folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")} | {
        "MIRRORPOOL_PRIMARY_DSN": bouncer.dsn(database, user=SERVICE),
        "MIRRORPOOL_PGBOUNCER": "true",
        "MIRRORPOOL_MIGRATIONS_DSN": pair.primary.dsn(database, user=OWNER),
        "MIRRORPOOL_MIGRATIONS_DIR": str(folder),
        "MIRRORPOOL_LOG_LEVEL": "warning",
    }
    applied = subprocess.run(
        [sys.executable, "-m", "app", "migrate", "apply"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    assert "done    up   0001_items.up.sql" in applied.stdout
    assert "done    up   0002_items_id.up.sql" in applied.stdout
    with pair.primary.connect(database) as conn:
        versions = conn.execute("SELECT version FROM mirrorpool_schema_history ORDER BY 1")
        assert versions.fetchall() == [("1",), ("2",)]


async def test_neon_sql_answers_in_postgresql_styles_behind_pgbouncer(
    pair: LocalPair, bouncer: LocalPgBouncer, database: str
) -> None:
    """POST /sql sets PostgreSQL's output styles with SET LOCAL here too, single queries and
    batches alike, and mirrorpool's own requests keep theirs."""
    interval = "SELECT '1 day 02:00'::interval AS i, current_setting('IntervalStyle') AS s"
    rows = {"Neon-Array-Mode": "true"}
    async with serve(pair, bouncer, database) as (_, client):
        for _ in range(3):
            r = await client.post("/sql", content=json.dumps({"query": interval}), headers=rows)
            assert r.json()["rows"] == [["1 day 02:00:00", "postgres"]], r.text
            batch = {
                "queries": [{"query": interval}, {"query": "SELECT $1::int8", "params": ["7"]}]
            }
            r = await client.post("/sql", content=json.dumps(batch), headers=rows)
            assert [x["rows"] for x in r.json()["results"]] == [
                [["1 day 02:00:00", "postgres"]], [["7"]],
            ]  # fmt: skip
            assert (await query(client, interval))["rows"] == [["P1DT2H", "iso_8601"]]
