"""`mirrorpool migrate` from the command line, and two runners racing each other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.devdb import SERVICE, LocalPair


def env_for(pair: LocalPair, database: str, folder: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")}
    return base | {
        "MIRRORPOOL_PRIMARY_DSN": pair.primary.dsn(database, user=SERVICE),
        "MIRRORPOOL_MIRROR_DSN": pair.mirrors[0].dsn(database, user=SERVICE),
        "MIRRORPOOL_MIGRATIONS_DSN": pair.migrations_dsn(database),
        "MIRRORPOOL_MIGRATIONS_DIR": str(folder),
        "MIRRORPOOL_HEALTH_INTERVAL": "0.1",
        "MIRRORPOOL_LOG_LEVEL": "warning",
        "MIRRORPOOL_MIGRATION_LOCK_WAIT_S": "30",
    }


def migrate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "migrate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "migrations"
    path.mkdir()
    # Each version logs its own run, so a double application would show.
    (path / "0001_log.up.sql").write_text(
        "CREATE TABLE runs (version int);\nINSERT INTO runs VALUES (1);\nSELECT pg_sleep(0.5);\n"
    )
    (path / "0001_log.down.sql").write_text("DROP TABLE runs;\n")
    (path / "0002_more.up.sql").write_text("INSERT INTO runs VALUES (2);\nSELECT pg_sleep(0.5);\n")
    (path / "0002_more.down.sql").write_text("DELETE FROM runs WHERE version = 2;\n")
    return path


def test_cli_status_plan_apply_rollback(pair: LocalPair, database: str, folder: Path) -> None:
    env = env_for(pair, database, folder)
    status = migrate(env, "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.split() == ["1", "pending", "log", "2", "pending", "more"]
    plan = migrate(env, "plan", "--target", "1")
    assert plan.stdout.split() == ["up", "1", "0001_log.up.sql"]
    dry = migrate(env, "apply", "--dry-run")
    assert "planned" in dry.stdout
    assert "pending" in migrate(env, "status").stdout
    applied = migrate(env, "apply")
    assert applied.returncode == 0, applied.stderr
    assert "done    up   0001_log.up.sql in" in applied.stdout
    rolled = migrate(env, "rollback", "--target", "1")
    assert rolled.returncode == 0, rolled.stderr
    assert "0002_more.down.sql" in rolled.stdout
    assert migrate(env, "status").stdout.split() == ["1", "applied", "log", "2", "pending", "more"]
    unknown = migrate(env, "apply", "--target", "9")
    assert unknown.returncode == 1
    assert "no migration file has version 9" in unknown.stderr


def test_two_processes_apply_each_version_exactly_once(
    pair: LocalPair, database: str, folder: Path
) -> None:
    env = env_for(pair, database, folder)
    runners = [
        subprocess.Popen(
            [sys.executable, "-m", "app", "migrate", "apply"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [r.communicate(timeout=120) for r in runners]
    assert [r.returncode for r in runners] == [0, 0], outputs
    with pair.primary.connect(database) as conn:
        runs = conn.execute("SELECT version, count(*) FROM runs GROUP BY 1 ORDER BY 1").fetchall()
        history = conn.execute(
            "SELECT version, status FROM mirrorpool_schema_history ORDER BY 1"
        ).fetchall()
    assert runs == [(1, 1), (2, 1)]
    assert history == [("1", "applied"), ("2", "applied")]
    done = [out for out, _ in outputs if "done" in out]
    assert len(done) == 1, outputs


def test_repair_without_a_version_repairs_everything_and_says_what(
    pair: LocalPair, database: str, folder: Path
) -> None:
    env = env_for(pair, database, folder)
    (folder / "0003_index.up.sql").write_text("CREATE INDEX CONCURRENTLY runs_v ON nowhere (v);\n")
    assert migrate(env, "apply").returncode == 1  # 0003 fails outside a transaction: failed
    (folder / "0001_log.up.sql").write_text("CREATE TABLE runs (version bigint);\n")  # edited
    (folder / "0002_more.up.sql").unlink()  # and gone, its down file with it
    (folder / "0002_more.down.sql").unlink()
    refused = migrate(env, "apply")
    assert refused.returncode == 1
    assert refused.stderr == (
        "mirrorpool migrate apply: migrations differ from what was applied: 1 (modified), "
        "2 (missing), 3 (failed); restore the files, or repair the history "
        "(mirrorpool migrate repair)\n"
    )
    repaired = migrate(env, "repair")  # no version, no prompt
    assert repaired.returncode == 0, repaired.stderr
    assert repaired.stdout.splitlines() == [
        "version 1: re-recorded checksum",
        "version 2: forgot missing file",
        "version 3: cleared failed entry",
    ]
    assert migrate(env, "status").stdout.split() == ["1", "applied", "log", "3", "pending", "index"]
    assert migrate(env, "repair").stdout == "nothing to do\n"


def test_cluster_events_are_logged_only_when_verbose(
    pair: LocalPair, database: str, folder: Path
) -> None:
    # Without MIRRORPOOL_MIGRATIONS_DSN the CLI follows the cluster to find the writer.
    env = env_for(pair, database, folder) | {"MIRRORPOOL_LOG_LEVEL": "info"}
    del env["MIRRORPOOL_MIGRATIONS_DSN"]
    quiet = migrate(env, "status")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.split()[:2] == ["1", "pending"]
    assert quiet.stderr == ""
    for args in (("-v", "status"), ("status", "--verbose")):
        verbose = migrate(env, *args)
        assert verbose.stdout == quiet.stdout
        assert "app.cluster: node_up primary" in verbose.stderr
        assert "writer_changed primary" in verbose.stderr


def test_targets_are_versions_as_the_folder_spells_them(
    pair: LocalPair, database: str, tmp_path: Path
) -> None:
    folder = tmp_path / "flyway"
    for name in ("V1__a.sql", "V1_1__b.sql", "V1.2__c.sql", "V2023.01.02__d.sql"):
        table = name.split("__")[1].removesuffix(".sql")
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(f"CREATE TABLE {table} ();\n")
        (folder / ("U" + name[1:])).write_text(f"DROP TABLE {table};\n")
    env = env_for(pair, database, folder)
    applied = migrate(env, "apply", "--target", "1.1")
    assert [line.split()[2] for line in applied.stdout.splitlines()] == ["V1__a.sql", "V1_1__b.sql"]
    applied = migrate(env, "apply", "--target", "2023.01.02")
    assert [line.split()[2] for line in applied.stdout.splitlines()] == [
        "V1.2__c.sql", "V2023.01.02__d.sql",
    ]  # fmt: skip
    rolled = migrate(env, "rollback", "--target", "1.1")
    assert [line.split()[2] for line in rolled.stdout.splitlines()] == [
        "U2023.01.02__d.sql", "U1.2__c.sql",
    ]  # fmt: skip
    assert migrate(env, "status").stdout.split() == [
        "1", "applied", "a", "1.1", "applied", "b", "1.2", "pending", "c",
        "2023.01.02", "pending", "d",
    ]  # fmt: skip
    bad = migrate(env, "apply", "--target", "1.x")
    assert bad.returncode == 2
    assert "'1.x' is not a version (like 3, 1.2 or 2023.01.02)" in bad.stderr
    missing = migrate(env, "apply", "--target", "1.3")
    assert (missing.returncode, missing.stderr) == (
        1, "mirrorpool migrate apply: no migration file has version 1.3\n",
    )  # fmt: skip
