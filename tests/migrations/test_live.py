"""Files read live: what the folder holds now is what status, plan and apply see, in the API
and the CLI alike, without a restart; each file is read once per version of it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.devdb import LocalPair
from app.migrations.folder import MigrationFolder
from tests.conftest import serving_ready, settings_for
from tests.migrations.test_cli import env_for, migrate
from tests.waiting import eventually_sync


def rewrite_keeping_times(path: Path, text: str) -> None:
    """Write `text` (of the same size) and put the modification time back, as `cp -p` or an
    editor that keeps times would; written again until the change time has moved on, since
    one within the file system's timestamp granularity is the racy case RACY_S covers."""
    before = path.stat()
    assert len(text.encode()) == before.st_size

    def moved() -> bool:
        path.write_text(text)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        return path.stat().st_ctime_ns != before.st_ctime_ns

    eventually_sync(moved, "a later change time")


def test_a_file_is_read_once_per_version_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "0001_a.up.sql"
    path.write_text("CREATE TABLE a ();\n")
    folder = MigrationFolder(tmp_path)
    fresh = folder.read().migrations[0].up
    assert folder.read().migrations[0].up is not fresh  # just written: read again each time

    monkeypatch.setattr("app.migrations.folder.RACY_S", 0.0)  # as if written long ago
    kept = folder.read().migrations[0].up
    assert folder.read().migrations[0].up is kept  # unchanged since: the same script object
    assert folder.unchanged(kept)

    # An edit of the same size with its modification time put back still moves the change
    # time (which nothing can set back), so it is read.
    rewrite_keeping_times(path, "CREATE TABLE b ();\n")
    assert not folder.unchanged(kept)
    edited = folder.read().migrations[0].up
    assert edited.sql == "CREATE TABLE b ();\n"
    assert edited.checksum != kept.checksum


@pytest.fixture
async def api(
    pair: LocalPair, database: str, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    (tmp_path / "0001_users.up.sql").write_text("CREATE TABLE users (id int);\n")
    settings = settings_for(pair, database, migrations_dir=tmp_path)
    async with serving_ready(settings) as served:
        yield served


async def test_the_running_service_sees_files_added_edited_and_repaired_by_the_cli(
    api: tuple[FastAPI, httpx.AsyncClient], pair: LocalPair, database: str, tmp_path: Path
) -> None:
    _, client = api
    assert (await client.post("/v1/migrations/apply")).status_code == 200
    (tmp_path / "0002_orders.up.sql").write_text("CREATE TABLE orders (id int);\n")
    status = (await client.get("/v1/migrations")).json()
    assert [(v["version"], v["state"]) for v in status["versions"]] == [
        ("1", "applied"), ("2", "pending"),
    ]  # fmt: skip
    applied = await client.post("/v1/migrations/apply")
    assert [s["file"] for s in applied.json()["steps"]] == ["0002_orders.up.sql"]

    (tmp_path / "0001_users.up.sql").write_text("CREATE TABLE users (id bigint);\n")
    status = (await client.get("/v1/migrations")).json()
    assert status["versions"][0]["state"] == "modified"
    env = env_for(pair, database, tmp_path)
    assert migrate(env, "status").stdout.split()[:2] == ["1", "modified"]  # they agree
    assert migrate(env, "repair").stdout == "version 1: re-recorded checksum\n"
    status = (await client.get("/v1/migrations")).json()  # no restart
    assert {v["state"] for v in status["versions"]} == {"applied"}
    (tmp_path / "0002_orders.up.sql").unlink()
    assert (await client.get("/v1/migrations")).json()["versions"][1]["state"] == "missing"


async def test_apply_runs_the_file_as_it_is_not_as_it_was_read_before(
    api: tuple[FastAPI, httpx.AsyncClient],
    pair: LocalPair,
    database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, client = api
    monkeypatch.setattr("app.migrations.folder.RACY_S", 0.0)  # files are kept at once
    path = tmp_path / "0002_t.up.sql"
    path.write_text("CREATE TABLE t1 (id int);\n")
    plan = (await client.get("/v1/migrations/plan")).json()["steps"]
    assert plan[-1]["sql"] == "CREATE TABLE t1 (id int);\n"  # read and kept
    rewrite_keeping_times(path, "CREATE TABLE t2 (id int);\n")
    applied = await client.post("/v1/migrations/apply")
    assert applied.json()["steps"][-1]["sql"] == "CREATE TABLE t2 (id int);\n"
    with pair.primary.connect(database) as conn:
        made = conn.execute(
            "SELECT to_regclass('t1') IS NOT NULL, to_regclass('t2') IS NOT NULL"
        ).fetchone()
    assert made == (False, True)
    status = (await client.get("/v1/migrations")).json()
    assert status["versions"][1]["state"] == "applied"  # the checksum of what ran


async def test_a_folder_broken_while_serving_is_a_clear_error(
    api: tuple[FastAPI, httpx.AsyncClient], tmp_path: Path
) -> None:
    _, client = api
    (tmp_path / "V2__flyway.sql").write_text("SELECT 1;\n")
    response = await client.get("/v1/migrations")
    # The request is fine; the folder as it is now is not: 409 (conflicts with the state),
    # never a 500.
    assert response.status_code == 409
    problem = response.json()
    assert problem["type"] == "urn:mirrorpool:problem:migration-folder"
    assert "the folder mixes formats" in problem["detail"]
    (tmp_path / "V2__flyway.sql").unlink()
    assert (await client.get("/v1/migrations")).status_code == 200
