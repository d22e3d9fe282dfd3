"""Adopting a database another tool migrated: its history table says what ran, mirrorpool
records that as applied without running it, and runs only the rest.

The tables are made as the tools make them on PostgreSQL (Flyway's flyway_schema_history,
golang-migrate's and dbmate's schema_migrations), and the files they applied are run with
psql first, as the tool would have run them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from psycopg import sql

from app.devdb import LocalPair
from app.migrations.files import flyway_checksum
from tests.conftest import as_owner, serving_ready, settings_for
from tests.migrations.schemas import another_database, dbmate_section, psql, schema_of
from tests.migrations.test_cli import env_for, migrate
from tests.migrations.test_real_world_folders import CASES, FOLDERS, by_hand

# Flyway 9/10 on PostgreSQL.
FLYWAY_TABLE = """
CREATE TABLE flyway_schema_history (
    installed_rank integer NOT NULL,
    version varchar(50),
    description varchar(200) NOT NULL,
    type varchar(20) NOT NULL,
    script varchar(1000) NOT NULL,
    checksum integer,
    installed_by varchar(100) NOT NULL,
    installed_on timestamp NOT NULL DEFAULT now(),
    execution_time integer NOT NULL,
    success boolean NOT NULL,
    CONSTRAINT flyway_schema_history_pk PRIMARY KEY (installed_rank)
);
CREATE INDEX flyway_schema_history_s_idx ON flyway_schema_history (success)
"""
GOLANG_MIGRATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint NOT NULL PRIMARY KEY, "
    "dirty boolean NOT NULL)"
)
DBMATE_TABLE = "CREATE TABLE IF NOT EXISTS schema_migrations (version varchar(128) PRIMARY KEY)"
OTHER_TABLES = ("flyway_schema_history", "schema_migrations")


def copy(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(FOLDERS / name, folder)
    return folder


def flyway_row(rank: int, version: str | None, file: str, checksum: int | None,
               kind: str = "SQL") -> str:  # fmt: skip
    """An INSERT of the row Flyway writes when it has run `file`."""
    description = "<< Flyway Baseline >>" if kind == "BASELINE" else (
        file.split("__", 1)[1].removesuffix(".sql").replace("_", " ")
    )  # fmt: skip
    return (
        sql.SQL(
            "INSERT INTO flyway_schema_history (installed_rank, version, description, type, "
            "script, checksum, installed_by, execution_time, success) "
            "VALUES ({}, {}, {}, {}, {}, {}, 'app', 12, true)"
        )
        .format(*map(sql.Literal, (rank, version, description, kind, file, checksum)))
        .as_string()
    )


def full_schema(pair: LocalPair, name: str, folder: Path) -> object:
    """The schema psql leaves running every file of the folder in the tool's order."""
    case = CASES[name]
    with another_database(pair) as manual:
        psql(pair, manual, *by_hand(folder, case, case.ups, "up"))
        return schema_of(pair, manual)


async def test_a_flyway_database_is_adopted_and_only_the_rest_runs(
    pair: LocalPair, database: str, tmp_path: Path
) -> None:
    folder = copy(tmp_path, "flyway")
    done_by_flyway = ["V1__create_users.sql", "V1.1__add_name.sql", "V1_2__orders.sql",
                      "R__user_summary.sql"]  # fmt: skip
    psql(pair, database, *(folder / f for f in done_by_flyway))
    checksum = {f: flyway_checksum((folder / f).read_text()) for f in done_by_flyway}
    as_owner(
        pair,
        FLYWAY_TABLE,
        flyway_row(1, "1", "V1__create_users.sql", checksum["V1__create_users.sql"]),
        flyway_row(2, "1.1", "V1.1__add_name.sql", checksum["V1.1__add_name.sql"]),
        flyway_row(3, "1.2", "V1_2__orders.sql", checksum["V1_2__orders.sql"]),
        flyway_row(4, None, "R__user_summary.sql", checksum["R__user_summary.sql"]),
        dbname=database,
    )
    settings = settings_for(pair, database, migrations_dir=folder)
    async with serving_ready(settings) as (_, client):
        status = (await client.get("/v1/migrations")).json()
        assert [(v["version"], v["state"], v["baseline_from"]) for v in status["versions"]] == [
            ("1", "baseline", "flyway_schema_history"),
            ("1.1", "baseline", "flyway_schema_history"),
            ("1.2", "baseline", "flyway_schema_history"),
            ("2", "pending", None),
            ("3", "pending", None),
            ("2023.01.02", "pending", None),
            (None, "baseline", "flyway_schema_history"),
        ]
        assert (status["current_version"], status["pending"]) == ("1.2", 3)
        plan = (await client.get("/v1/migrations/plan")).json()["steps"]
        assert [(s["direction"], s["file"]) for s in plan] == [
            ("baseline", "V1__create_users.sql"),
            ("baseline", "V1.1__add_name.sql"),
            ("baseline", "V1_2__orders.sql"),
            ("baseline", "R__user_summary.sql"),
            ("up", "V2__users_email.sql"),
            ("up", "V3__orders_comment.sql"),
            ("up", "2023/V2023.01.02__audit.sql"),
        ]
        applied = await client.post("/v1/migrations/apply")
        assert applied.status_code == 200, applied.text
        assert [s["status"] for s in applied.json()["steps"]] == ["recorded"] * 4 + ["done"] * 3
        status = (await client.get("/v1/migrations")).json()
        assert {v["state"] for v in status["versions"]} == {"applied"}
        assert status["versions"][0]["applied_by"].endswith("(baseline from flyway_schema_history)")
        assert (await client.post("/v1/migrations/apply")).json()["steps"] == []
        metrics = (await client.get("/metrics")).text
        assert "mirrorpool_migrations_pending 0.0" in metrics
        assert "mirrorpool_migration_version " not in metrics  # 2023.01.02 is no number
    assert schema_of(pair, database, leaving_out=OTHER_TABLES) == full_schema(
        pair, "flyway", folder
    )
    with pair.primary.connect(database) as conn:  # Flyway's own table is left as it was
        assert conn.execute("SELECT count(*) FROM flyway_schema_history").fetchone() == (4,)


def test_a_flyway_baseline_row_and_a_changed_repeatable_through_the_cli(
    pair: LocalPair, database: str, tmp_path: Path
) -> None:
    folder = copy(tmp_path, "flyway")
    # Flyway baselined an existing schema at 1.1, then ran 1.2 and the repeatable view, which
    # has been edited since: Flyway would run it again, and so does mirrorpool.
    ran = ("V1__create_users.sql", "V1.1__add_name.sql", "V1_2__orders.sql", "R__user_summary.sql")
    psql(pair, database, *(folder / f for f in ran))
    as_owner(
        pair,
        FLYWAY_TABLE,
        flyway_row(1, "1.1", "<< Flyway Baseline >>", None, kind="BASELINE"),
        flyway_row(2, "1.2", "V1_2__orders.sql", 1),
        flyway_row(3, None, "R__user_summary.sql", 12345),
        dbname=database,
    )
    env = env_for(pair, database, folder)
    adopted = migrate(env, "baseline")
    assert adopted.returncode == 0, adopted.stderr
    assert adopted.stdout.splitlines() == [
        f"recorded version {v} as applied (from flyway_schema_history)" for v in ("1", "1.1", "1.2")
    ]
    applied = migrate(env, "apply")
    assert applied.returncode == 0, applied.stderr
    assert [line.split()[2] for line in applied.stdout.splitlines()] == [
        "V2__users_email.sql", "V3__orders_comment.sql", "2023/V2023.01.02__audit.sql",
        "R__user_summary.sql",
    ]  # fmt: skip
    assert schema_of(pair, database, leaving_out=OTHER_TABLES) == full_schema(
        pair, "flyway", folder
    )


def test_a_golang_migrate_database_is_adopted_through_the_cli(
    pair: LocalPair, database: str, tmp_path: Path
) -> None:
    folder = copy(tmp_path, "golang-migrate")
    psql(pair, database, folder / "000001_init.up.sql", folder / "000002_1.7.0_schema.up.sql")
    as_owner(pair, GOLANG_MIGRATE_TABLE, "INSERT INTO schema_migrations VALUES (2, false)",
             dbname=database)  # fmt: skip
    env = env_for(pair, database, folder)
    planned = migrate(env, "plan")
    assert planned.stdout.splitlines() == [
        "baseline      1 000001_init.up.sql  (applied per schema_migrations: recorded, not run)",
        "baseline      2 000002_1.7.0_schema.up.sql  (applied per schema_migrations: recorded, "
        "not run)",
        "up        3 000003_v2.0.accounts_plan.up.sql  (outside a transaction: CREATE INDEX "
        "CONCURRENTLY)",
        "up        4 000004_suspend.up.sql  (outside a transaction: -- morph:nontransactional)",
    ]
    adopted = migrate(env, "baseline")
    assert adopted.stdout.splitlines() == [
        "recorded version 1 as applied (from schema_migrations)",
        "recorded version 2 as applied (from schema_migrations)",
    ]
    status = migrate(env, "status")
    assert status.stdout.split() == ["1", "applied", "init", "2", "applied", "1.7.0_schema",
                                     "3", "pending", "v2.0.accounts_plan",
                                     "4", "pending", "suspend"]  # fmt: skip
    applied = migrate(env, "apply")
    assert applied.returncode == 0, applied.stderr
    assert [line.split()[2] for line in applied.stdout.splitlines()] == [
        "000003_v2.0.accounts_plan.up.sql", "000004_suspend.up.sql",
    ]  # fmt: skip
    assert schema_of(pair, database, leaving_out=OTHER_TABLES) == full_schema(
        pair, "golang-migrate", folder
    )
    assert migrate(env, "baseline").stdout.startswith("nothing to do")


async def test_the_baseline_endpoint_records_without_running(
    pair: LocalPair, database: str, tmp_path: Path
) -> None:
    folder = copy(tmp_path, "golang-migrate")
    psql(pair, database, folder / "000001_init.up.sql")
    as_owner(pair, GOLANG_MIGRATE_TABLE, "INSERT INTO schema_migrations VALUES (1, false)",
             dbname=database)  # fmt: skip
    settings = settings_for(pair, database, migrations_dir=folder)
    async with serving_ready(settings) as (_, client):
        adopted = await client.post("/v1/migrations/baseline")
        assert adopted.status_code == 200, adopted.text
        assert [(s["version"], s["direction"], s["status"], s["baseline_from"])
                for s in adopted.json()["steps"]] == [
            ("1", "baseline", "recorded", "schema_migrations")
        ]  # fmt: skip
        status = (await client.get("/v1/migrations")).json()
        assert [(v["version"], v["state"]) for v in status["versions"]] == [
            ("1", "applied"), ("2", "pending"), ("3", "pending"), ("4", "pending"),
        ]  # fmt: skip
        assert status["versions"][0]["applied_by"].startswith("http:")
        again = await client.post("/v1/migrations/baseline")
        assert again.json()["steps"] == []
    with pair.primary.connect(database) as conn:  # recorded, not run: no second CREATE
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (0,)


def test_a_dirty_golang_migrate_version_is_refused_before_anything_runs(
    pair: LocalPair, database: str, tmp_path: Path
) -> None:
    folder = copy(tmp_path, "golang-migrate")
    psql(pair, database, folder / "000001_init.up.sql")
    as_owner(pair, GOLANG_MIGRATE_TABLE, "INSERT INTO schema_migrations VALUES (2, true)",
             dbname=database)  # fmt: skip
    refused = migrate(env_for(pair, database, folder), "apply")
    assert refused.returncode == 1
    assert "golang-migrate left version 2 dirty in schema_migrations" in refused.stderr
    with pair.primary.connect(database) as conn:
        assert conn.execute("SELECT to_regclass('mirrorpool_schema_history')").fetchone() == (None,)


async def test_a_dbmate_database_is_adopted_on_the_first_apply(
    pair: LocalPair, database: str, tmp_path: Path
) -> None:
    folder = copy(tmp_path, "dbmate")
    psql(pair, database, *(dbmate_section(folder / f, "up") for f in (
        "20230101120000_create_tags.sql", "20230102090000_tags_name.sql")))  # fmt: skip
    as_owner(
        pair,
        DBMATE_TABLE,
        "INSERT INTO schema_migrations VALUES ('20230101120000'), ('20230102090000')",
        dbname=database,
    )
    settings = settings_for(pair, database, migrations_dir=folder)
    async with serving_ready(settings) as (_, client):
        applied = await client.post("/v1/migrations/apply")
        assert applied.status_code == 200, applied.text
        assert [(s["version"], s["status"]) for s in applied.json()["steps"]] == [
            ("20230101120000", "recorded"), ("20230102090000", "recorded"),
            ("20230103000000", "done"),
        ]  # fmt: skip
    assert schema_of(pair, database, leaving_out=OTHER_TABLES) == full_schema(
        pair, "dbmate", folder
    )
    with pair.primary.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM tags").fetchone() == (2,)


@pytest.mark.parametrize(
    ("name", "table"),
    [("flyway", FLYWAY_TABLE), ("golang-migrate", GOLANG_MIGRATE_TABLE), ("dbmate", DBMATE_TABLE)],
)
async def test_an_empty_history_table_of_another_tool_changes_nothing(
    pair: LocalPair, database: str, tmp_path: Path, name: str, table: str
) -> None:
    folder = copy(tmp_path, name)
    as_owner(pair, table, dbname=database)
    settings = settings_for(pair, database, migrations_dir=folder)
    async with serving_ready(settings) as (_, client):
        plan = (await client.get("/v1/migrations/plan")).json()["steps"]
        assert {s["direction"] for s in plan} == {"up"}
        applied = await client.post("/v1/migrations/apply")
        assert [s["file"] for s in applied.json()["steps"]] == CASES[name].ups


async def test_a_folder_may_create_and_read_a_table_named_like_another_tools(
    pair: LocalPair, database: str, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_versions.up.sql").write_text(
        "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean "
        "NOT NULL);\nINSERT INTO schema_migrations VALUES (5, false);\n"
    )
    (folder / "0002_next.up.sql").write_text(
        "INSERT INTO schema_migrations SELECT max(version) + 1, false FROM schema_migrations;\n"
    )
    (folder / "0003_last.up.sql").write_text("CREATE TABLE last (id int);\n")
    settings = settings_for(pair, database, migrations_dir=folder)
    async with serving_ready(settings) as (_, client):
        first = await client.post("/v1/migrations/apply", json={"target": 1})
        assert [s["version"] for s in first.json()["steps"]] == ["1"]
        # schema_migrations now says 5 in golang-migrate's layout: it adopts nothing,
        # mirrorpool's own history says what ran.
        rest = await client.post("/v1/migrations/apply")
        assert [(s["version"], s["status"]) for s in rest.json()["steps"]] == [
            ("2", "done"), ("3", "done"),
        ]  # fmt: skip
    with pair.primary.connect(database) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
    assert rows == [(5,), (6,)]
