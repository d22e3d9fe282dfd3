"""A failed migration names its file and line: for PostgreSQL's position, and for errors
raised while a DO block or a function of the same file runs (PL/pgSQL context)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.devdb import LocalPair
from tests.conftest import serving_ready, settings_for
from tests.migrations.test_cli import env_for, migrate

DO_BLOCK = """CREATE TABLE t (id int);

DO $$
DECLARE n int;
BEGIN
    SELECT count(*) INTO n FROM t;
    IF n = 0 THEN
        RAISE EXCEPTION 'no rows in t';
    END IF;
END $$;
"""
FUNCTION = """-- A check, then its use.
CREATE FUNCTION check_positive(x int) RETURNS int LANGUAGE plpgsql AS $body$
BEGIN
    IF x <= 0 THEN
        RAISE EXCEPTION 'not positive: %', x;
    END IF;
    RETURN x;
END
$body$;

SELECT check_positive(1), check_positive(-1);
"""
TRIGGER = """CREATE TABLE items (id int, price int);
CREATE FUNCTION no_free() RETURNS trigger LANGUAGE plpgsql AS '
BEGIN
  IF NEW.price = 0 THEN
    RAISE EXCEPTION ''free item %'', NEW.id;
  END IF;
  RETURN NEW;
END';
CREATE TRIGGER no_free BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION no_free();
INSERT INTO items VALUES (1, 5);
INSERT INTO items VALUES (2, 0);
"""
POSITION = "-- Prices in €, names in 日本語.\nSELECT 'é';\nSELECT\n  'ü',\n  no_such_column;\n"


@pytest.fixture
async def client(
    pair: LocalPair, database: str, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(pair, database, migrations_dir=tmp_path)
    async with serving_ready(settings) as (_, client):
        yield client


@pytest.mark.parametrize(
    ("sql", "line", "message", "context"),
    [
        (DO_BLOCK, 8, "no rows in t", "PL/pgSQL function inline_code_block line 6 at RAISE"),
        (FUNCTION, 5, "not positive: -1", "PL/pgSQL function check_positive(integer) line 4"),
        (TRIGGER, 5, "free item 2", "PL/pgSQL function no_free() line 4 at RAISE"),
        (POSITION, 5, 'column "no_such_column" does not exist', None),
    ],
)
async def test_a_run_time_failure_names_the_files_line(
    client: httpx.AsyncClient, tmp_path: Path, sql: str, line: int, message: str,
    context: str | None,
) -> None:  # fmt: skip
    (tmp_path / "0001_fails.up.sql").write_text(sql)
    response = await client.post("/v1/migrations/apply")
    assert response.status_code == 400, response.text
    problem = response.json()
    assert (problem["file"], problem["line"]) == ("0001_fails.up.sql", line)
    assert problem["detail"] == f"0001_fails.up.sql:{line}: {message}"
    if context is None:
        assert "context" not in problem
    else:
        assert problem["context"].startswith(context)
    status = (await client.get("/v1/migrations")).json()
    assert status["versions"][0]["state"] == "pending"  # rolled back with its history row


async def test_a_function_from_an_earlier_file_names_the_calling_statement(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    (tmp_path / "0001_check.up.sql").write_text(FUNCTION.partition("\nSELECT")[0])
    (tmp_path / "0002_use.up.sql").write_text("SELECT 1;\n\nSELECT check_positive(0);\n")
    response = await client.post("/v1/migrations/apply")
    problem = response.json()
    assert (problem["file"], problem["line"]) == ("0002_use.up.sql", 3)
    assert "check_positive(integer) line 4 at RAISE" in problem["context"]


def test_a_dbmate_down_section_fails_on_the_files_own_line(
    pair: LocalPair, database: str, tmp_path: Path
) -> None:
    (tmp_path / "20240101000000_t.sql").write_text(
        "-- migrate:up\nCREATE TABLE t (id int);\n\n-- migrate:down\nDROP TABLE t;\n"
        "DROP TABLE not_there;\n"
    )
    env = env_for(pair, database, tmp_path)
    assert migrate(env, "apply").returncode == 0
    failed = migrate(env, "rollback", "--target", "0")
    assert failed.returncode == 1
    assert failed.stderr.startswith(
        'mirrorpool migrate rollback: 20240101000000_t.sql:6: table "not_there" does not exist'
    )
    assert migrate(env, "status").stdout.split() == ["20240101000000", "applied", "t"]


def test_the_cli_prints_the_line_and_the_plpgsql_context(
    pair: LocalPair, database: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_fails.up.sql").write_text(DO_BLOCK)
    failed = migrate(env_for(pair, database, tmp_path), "apply")
    assert failed.returncode == 1
    assert failed.stderr.splitlines() == [
        "mirrorpool migrate apply: 0001_fails.up.sql:8: no rows in t",
        "  context: PL/pgSQL function inline_code_block line 6 at RAISE",
    ]
