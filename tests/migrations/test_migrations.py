"""Migrations against real PostgreSQL: apply, roll back, drift, failures, locks, the mirror."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from app.devdb import OWNER, SERVICE, LocalPair
from app.errors import SettingsError
from app.migrations.folder import MigrationFolder
from app.migrations.lock import LOCK_KEY
from tests.conftest import as_owner, serving_ready, settings_for
from tests.waiting import eventually


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "migrations"
    path.mkdir()
    return path


def write(folder: Path, name: str, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    (folder / name).write_bytes(data)


@pytest.fixture
async def api(
    pair: LocalPair, database: str, folder: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    write(folder, "0001_users.up.sql", "CREATE TABLE users (id int PRIMARY KEY, email text);\n")
    write(folder, "0001_users.down.sql", "DROP TABLE users;\n")
    write(folder, "0002_email_index.up.sql", "CREATE UNIQUE INDEX users_email ON users (email);\n")
    write(folder, "0002_email_index.down.sql", "DROP INDEX users_email;\n")
    write(
        folder, "0005_orders.up.sql", "CREATE TABLE orders (id int, user_id int REFERENCES users);"
    )
    write(folder, "0005_orders.down.sql", "DROP TABLE orders;")
    settings = settings_for(
        pair,
        primary_dsn=pair.primary.dsn(database, user=SERVICE),
        mirror_dsn=pair.mirrors[0].dsn(database, user=SERVICE),
        migrations_dsn=pair.migrations_dsn(database),
        migrations_dir=folder,
        migration_lock_wait_s=0.5,
    )
    async with serving_ready(settings) as served:
        await eventually(lambda: served[0].state.cluster.writer is not None, "a writer")
        yield served


def tables(pair: LocalPair, database: str) -> set[str]:
    """The database's tables and indexes, mirrorpool's history tables left out."""
    with pair.primary.connect(database) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
            " AND relkind IN ('r', 'i') AND relname NOT LIKE 'mirrorpool\\_%'"
        ).fetchall()
    return {r[0] for r in rows}


async def test_apply_and_roll_back_round_trip(
    api: tuple[FastAPI, httpx.AsyncClient], pair: LocalPair, database: str
) -> None:
    _, client = api
    status = (await client.get("/v1/migrations")).json()
    assert status["current_version"] is None
    assert status["pending"] == 3
    plan = (await client.get("/v1/migrations/plan")).json()["steps"]
    assert [(s["version"], s["direction"]) for s in plan] == [("1", "up"), ("2", "up"), ("5", "up")]
    assert tables(pair, database) == set()  # planning runs nothing

    applied = await client.post("/v1/migrations/apply", json={"target": 2})
    assert applied.status_code == 200, applied.text
    assert [s["version"] for s in applied.json()["steps"]] == ["1", "2"]
    assert all(s["execution_ms"] >= 0 for s in applied.json()["steps"])
    assert tables(pair, database) == {"users", "users_pkey", "users_email"}
    status = (await client.get("/v1/migrations")).json()
    assert status["current_version"] == "2"
    assert [(v["version"], v["state"]) for v in status["versions"]] == [
        ("1", "applied"), ("2", "applied"), ("5", "pending"),
    ]  # fmt: skip
    assert status["versions"][0]["applied_by"].startswith("http:")

    assert (await client.post("/v1/migrations/apply")).json()["steps"][0]["version"] == "5"
    assert "orders" in tables(pair, database)
    again = await client.post("/v1/migrations/apply")
    assert again.json()["steps"] == []

    rolled = await client.post("/v1/migrations/rollback", json={"target": 0})
    assert rolled.status_code == 200, rolled.text
    assert [s["version"] for s in rolled.json()["steps"]] == ["5", "2", "1"]
    assert tables(pair, database) == set()
    assert (await client.get("/v1/migrations")).json()["pending"] == 3


async def test_dangerous_statements_are_warned_about(
    api: tuple[FastAPI, httpx.AsyncClient], folder: Path
) -> None:
    _, client = api
    await client.post("/v1/migrations/apply")
    write(
        folder,
        "0006_risky.up.sql",
        "ALTER TABLE users DROP COLUMN email;\nCREATE INDEX o_u ON orders (user_id);",
    )
    steps = (await client.get("/v1/migrations/plan")).json()["steps"]
    assert len(steps) == 1
    warnings = " ".join(steps[0]["warnings"])
    assert "DROP COLUMN" in warnings
    assert "CREATE INDEX on orders without CONCURRENTLY" in warnings
    first = (
        await client.post("/v1/migrations/rollback", json={"target": 0, "dry_run": True})
    ).json()
    assert [s["status"] for s in first["steps"]] == ["planned"] * 3


def test_line_endings_and_bom_do_not_change_the_checksum(tmp_path: Path) -> None:
    for name, data in {
        "lf": b"CREATE TABLE t (id int);\nSELECT 1;\n",
        "crlf": b"CREATE TABLE t (id int);\r\nSELECT 1;\r\n",
        "bom": b"\xef\xbb\xbfCREATE TABLE t (id int);\r\nSELECT 1;\r\n",
    }.items():
        folder = tmp_path / name
        folder.mkdir()
        write(folder, "0001_t.up.sql", data)
    sums = {
        MigrationFolder(tmp_path / n).read().migrations[0].up.checksum
        for n in ("lf", "crlf", "bom")
    }
    assert len(sums) == 1
    assert sums.pop().startswith("sha256:")


async def test_edited_applied_file_is_modified_and_blocks_apply(
    api: tuple[FastAPI, httpx.AsyncClient], folder: Path
) -> None:
    _, client = api
    await client.post("/v1/migrations/apply", json={"target": 1})
    write(folder, "0001_users.up.sql", "CREATE TABLE users (id bigint PRIMARY KEY, email text);\n")
    status = (await client.get("/v1/migrations")).json()
    assert status["versions"][0]["state"] == "modified"
    refused = await client.post("/v1/migrations/apply")
    assert refused.status_code == 409
    assert "1 (modified)" in refused.json()["detail"]
    assert refused.json()["detail"].endswith("(POST /v1/migrations/repair)")
    repaired = await client.post("/v1/migrations/repair", json={"version": 1})
    assert repaired.json()["repaired"] == [
        {"version": "1", "name": "users", "file": "0001_users.up.sql",
         "action": "re-recorded checksum"}
    ]  # fmt: skip
    assert (await client.post("/v1/migrations/apply")).status_code == 200


async def test_missing_down_file_blocks_rollback_before_any_change(
    api: tuple[FastAPI, httpx.AsyncClient], folder: Path, pair: LocalPair, database: str
) -> None:
    _, client = api
    await client.post("/v1/migrations/apply")
    (folder / "0002_email_index.down.sql").unlink()
    refused = await client.post("/v1/migrations/rollback", json={"target": 0})
    assert refused.status_code == 409
    assert "no down file for version 2" in refused.json()["detail"]
    assert {"users", "orders", "users_email"} <= tables(pair, database)


async def test_failing_file_in_the_middle_leaves_no_trace(
    api: tuple[FastAPI, httpx.AsyncClient], folder: Path, pair: LocalPair, database: str
) -> None:
    _, client = api
    write(
        folder,
        "0003_broken.up.sql",
        # Parses (a syntax error would stop the plan, see below), fails only on the server.
        "CREATE TABLE half_done (id int);\nINSERT INTO users VALUES (1, 'a');\n"
        "SELECT no_such_column FROM users;\n",
    )
    response = await client.post("/v1/migrations/apply")
    assert response.status_code == 400
    problem = response.json()
    assert problem["sqlstate"] == "42703"
    assert problem["file"] == "0003_broken.up.sql"
    assert problem["line"] == 3
    status = {
        v["version"]: v["state"] for v in (await client.get("/v1/migrations")).json()["versions"]
    }
    assert status == {"1": "applied", "2": "applied", "3": "pending", "5": "pending"}
    assert "half_done" not in tables(pair, database)
    with pair.primary.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)


@pytest.mark.parametrize(
    ("sql", "sqlstate", "line", "says"),
    [
        (
            "CREATE TABLE half_done (id int);\n\nSELEC oops;\n",
            "42601",
            3,
            'syntax error at or near "SELEC"',
        ),
        (
            "CREATE TABLE half_done (id int);\n\nCREATE INDEX CONCURRENTLY u_e ON users (email);\n",
            "25001",
            3,
            "CREATE INDEX CONCURRENTLY cannot run inside a transaction block, and this file",
        ),
        # The half-applied file: its COMMIT would have kept half_done with no history row.
        (
            "BEGIN;\nCREATE TABLE half_done (id int);\nCOMMIT;\nSELECT 1/0;\n",
            None,
            1,
            "BEGIN is not allowed in a migration file: mirrorpool already runs each file",
        ),
    ],
)
async def test_a_file_that_cannot_run_stops_the_plan_before_any_file_is_applied(
    api: tuple[FastAPI, httpx.AsyncClient],
    folder: Path,
    pair: LocalPair,
    database: str,
    sql: str,
    sqlstate: str | None,
    line: int,
    says: str,
) -> None:
    _, client = api
    write(folder, "0003_broken.up.sql", sql)
    for response in (
        await client.get("/v1/migrations/plan"),
        await client.post("/v1/migrations/apply"),
    ):
        assert response.status_code == 400
        problem = response.json()
        assert problem.get("sqlstate") == sqlstate
        assert problem["file"] == "0003_broken.up.sql"
        assert problem["line"] == line
        assert problem["detail"].startswith(f"0003_broken.up.sql:{line}: {says}")
    states = {
        v["version"]: v["state"] for v in (await client.get("/v1/migrations")).json()["versions"]
    }
    assert set(states.values()) == {"pending"}  # not even versions 1 and 2 ran
    assert tables(pair, database) == set()


async def test_create_index_concurrently_in_a_no_transaction_file(
    api: tuple[FastAPI, httpx.AsyncClient], folder: Path, pair: LocalPair, database: str
) -> None:
    _, client = api
    write(
        folder,
        "0006_concurrent.up.sql",
        "-- mirrorpool: no-transaction\n"
        "CREATE INDEX CONCURRENTLY users_id_email ON users (id, email);\n",
    )
    write(
        folder,
        "0007_bad_concurrent.up.sql",
        "-- mirrorpool: no-transaction\nCREATE INDEX CONCURRENTLY x ON nowhere (id);\n",
    )
    plan = (await client.get("/v1/migrations/plan", params={"target": 6})).json()["steps"]
    assert plan[-1]["transaction"] is False
    assert plan[-1]["warnings"] == []
    response = await client.post("/v1/migrations/apply")
    assert response.status_code == 400
    assert response.json()["file"] == "0007_bad_concurrent.up.sql"
    assert "users_id_email" in tables(pair, database)
    states = {
        v["version"]: v["state"] for v in (await client.get("/v1/migrations")).json()["versions"]
    }
    assert states["6"] == "applied"
    assert states["7"] == "failed"
    blocked = await client.post("/v1/migrations/apply")
    assert blocked.status_code == 409
    assert "7 (failed)" in blocked.json()["detail"]
    await client.post("/v1/migrations/repair", json={"version": 7})
    states = {
        v["version"]: v["state"] for v in (await client.get("/v1/migrations")).json()["versions"]
    }
    assert states["7"] == "pending"


async def test_blocked_ddl_fails_by_lock_timeout_without_stalling_readers(
    pair: LocalPair, database: str, folder: Path
) -> None:
    write(folder, "0001_t.up.sql", "CREATE TABLE t (id int);")
    write(
        folder,
        "0002_alter.up.sql",
        "-- mirrorpool: lock_timeout=300ms\nALTER TABLE t ADD COLUMN x int;",
    )
    settings = settings_for(pair, database, mirror_dsn=None, migrations_dir=folder)
    async with serving_ready(settings) as (_, client):
        await client.post("/v1/migrations/apply", json={"target": 1})
        with psycopg.connect(pair.primary.dsn(database)) as holder:
            holder.execute("SELECT * FROM t")  # an open transaction holding a share lock
            migrating = asyncio.ensure_future(client.post("/v1/migrations/apply"))
            worst = 0.0
            while not migrating.done():
                started = time.monotonic()
                read = await client.post("/v1/query", json={"sql": "SELECT count(*) FROM t"})
                assert read.status_code == 200
                worst = max(worst, time.monotonic() - started)
            response = await migrating
            holder.rollback()
        assert response.status_code == 409
        assert response.json()["sqlstate"] == "55P03"
        assert worst < 1.0, f"a reader waited {worst:.2f} s behind the blocked ALTER"


async def test_lock_held_elsewhere_is_409_naming_the_holder(
    api: tuple[FastAPI, httpx.AsyncClient], pair: LocalPair, database: str
) -> None:
    _, client = api
    with psycopg.connect(pair.primary.dsn(database, user=OWNER), autocommit=True) as other:
        other.execute("SET application_name = 'someone-else'")
        other.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        response = await client.post("/v1/migrations/apply")
    assert response.status_code == 409
    assert response.json()["holder"]["application_name"] == "someone-else"


async def test_the_mirror_is_never_written(pair: LocalPair, database: str, folder: Path) -> None:
    write(folder, "0001_t.up.sql", "CREATE TABLE t (id int);")
    # Only the mirror is configured (as if the primary were lost): no writer, 503.
    settings = settings_for(
        pair,
        database,
        primary_dsn=pair.mirrors[0].dsn(database, user=SERVICE),
        mirror_dsn=None,
        migrations_dsn=None,
        migrations_dir=folder,
    )
    async with serving_ready(settings) as (_, client):
        response = await client.post("/v1/migrations/apply")
        assert response.status_code == 503
        assert response.json()["type"] == "urn:mirrorpool:problem:no-writer"


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        (["0001_a.up.sql", "1_b.up.sql"], "version 1 is claimed by 0001_a.up.sql, 1_b.up.sql"),
        (["0001_a.up.sql", "create_users.sql"], "create_users.sql: not a migration file name"),
        (["0002_a.down.sql"], "0002_a.down.sql: a down file without its up file"),
    ],
)
def test_bad_file_names_stop_start_up(tmp_path: Path, files: list[str], fragment: str) -> None:
    for name in files:
        write(tmp_path, name, "SELECT 1;")
    with pytest.raises(SettingsError) as caught:
        MigrationFolder(tmp_path).read()
    assert fragment in str(caught.value)


async def test_migration_version_and_pending_count_are_metrics(
    api: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    _, client = api
    await client.post("/v1/migrations/apply", json={"target": 2})
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families((await client.get("/metrics")).text)
        for s in family.samples
    }
    assert samples["mirrorpool_migration_version"] == 2
    assert samples["mirrorpool_migrations_pending"] == 1


async def test_a_history_table_of_an_older_mirrorpool_is_brought_up_to_date(
    pair: LocalPair, database: str, folder: Path
) -> None:
    write(folder, "0001_t.up.sql", "CREATE TABLE t (id int);\n")
    write(folder, "0002_u.up.sql", "CREATE TABLE u (id int);\n")
    old = MigrationFolder(folder).read().migrations[0].up.checksum
    as_owner(
        pair,
        # As mirrorpool made it before versions could be dotted.
        "CREATE TABLE mirrorpool_schema_history (version bigint PRIMARY KEY, name text NOT NULL,"
        " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), applied_by"
        " text NOT NULL, execution_ms integer NOT NULL, status text NOT NULL CHECK (status IN"
        " ('applied', 'failed')))",
        "CREATE TABLE t (id int)",
        f"INSERT INTO mirrorpool_schema_history VALUES (1, 't', '{old}', now(), 'cli:me', 3,"
        " 'applied')",
        dbname=database,
    )
    settings = settings_for(pair, database, mirror_dsn=None, migrations_dir=folder)
    async with serving_ready(settings) as (_, client):
        status = (await client.get("/v1/migrations")).json()  # read as it is
        assert [(v["version"], v["state"]) for v in status["versions"]] == [
            ("1", "applied"), ("2", "pending"),
        ]  # fmt: skip
        applied = await client.post("/v1/migrations/apply")
        assert [s["file"] for s in applied.json()["steps"]] == ["0002_u.up.sql"]
    with pair.primary.connect(database) as conn:
        kind = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'mirrorpool_schema_history'::regclass AND attname = 'version'"
        ).fetchone()
        rows = conn.execute(
            "SELECT version, applied_by FROM mirrorpool_schema_history ORDER BY 1"
        ).fetchall()
    assert kind == ("text",)
    assert rows[0] == ("1", "cli:me")
    assert rows[1][0] == "2"
