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
