"""Folders as teams have them (tests/migrations/folders/), applied by mirrorpool as they are.

For each format: apply works on the folder unchanged (through the CLI); the schema it leaves
equals the one psql leaves running the same files in the tool's order; rollback runs the down
files (through the API) and leaves what psql leaves running them; apply again finds nothing
to do; and after a rollback re-applies. A Flyway repeatable script runs again when edited.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.devdb import LocalPair
from tests.conftest import serving_ready, settings_for
from tests.migrations.schemas import another_database, dbmate_section, psql, schema_of
from tests.migrations.test_cli import env_for, migrate

FOLDERS = Path(__file__).parent / "folders"


@dataclass(frozen=True)
class Case:
    """One folder: its files in the order its own tool runs them, a rollback target and the
    down files that rollback runs (newest first), the files that run outside a transaction."""

    format: str
    ups: list[str]
    target: str
    downs: list[str]
    outside: dict[str, str]


CASES = {
    "flyway": Case(
        "flyway",
        [
            "V1__create_users.sql",
            "V1.1__add_name.sql",
            "V1_2__orders.sql",
            "V2__users_email.sql",
            "V3__orders_comment.sql",
            "2023/V2023.01.02__audit.sql",
            "R__user_summary.sql",
        ],
        "2",
        ["2023/U2023.01.02__audit.sql", "U3__orders_comment.sql"],
        {
            "V2__users_email.sql": "CREATE INDEX CONCURRENTLY",
            "V3__orders_comment.sql": "executeInTransaction=false",
        },
    ),
    "golang-migrate": Case(
        "mirrorpool",
        [
            "000001_init.up.sql",
            "000002_1.7.0_schema.up.sql",
            "000003_v2.0.accounts_plan.up.sql",
            "000004_suspend.up.sql",
        ],
        "1",
        [
            "000004_suspend.down.sql",
            "000003_v2.0.accounts_plan.down.sql",
            "000002_1.7.0_schema.down.sql",
        ],
        {
            "000003_v2.0.accounts_plan.up.sql": "CREATE INDEX CONCURRENTLY",
            "000004_suspend.up.sql": "-- morph:nontransactional",
        },
    ),
    "dbmate": Case(
        "dbmate",
        [
            "20230101120000_create_tags.sql",
            "20230102090000_tags_name.sql",
            "20230103000000_seed_tags.sql",
        ],
        "0",
        [
            "20230103000000_seed_tags.sql",
            "20230102090000_tags_name.sql",
            "20230101120000_create_tags.sql",
        ],
        {"20230102090000_tags_name.sql": "transaction:false"},
    ),
}


def by_hand(folder: Path, case: Case, files: list[str], section: str) -> list[Path | str]:
    """What psql runs for these files: each file, or a dbmate file's section."""
    if case.format == "dbmate":
        return [dbmate_section(folder / name, section) for name in files]
    return [folder / name for name in files]


@pytest.mark.parametrize("name", list(CASES))
async def test_a_folder_applies_as_it_is_like_psql_and_rolls_back(
    pair: LocalPair, database: str, tmp_path: Path, name: str
) -> None:
    case = CASES[name]
    folder = tmp_path / name
    shutil.copytree(FOLDERS / name, folder)
    with another_database(pair) as manual:
        psql(pair, manual, *by_hand(folder, case, case.ups, "up"))
        applied_by_hand = schema_of(pair, manual)
        psql(pair, manual, *by_hand(folder, case, case.downs, "down"))
        rolled_back_by_hand = schema_of(pair, manual)
    assert applied_by_hand != rolled_back_by_hand  # the rollback changes something

    env = env_for(pair, database, folder)
    planned = migrate(env, "plan")
    assert planned.returncode == 0, planned.stderr
    steps = [line.split() for line in planned.stdout.splitlines() if line.startswith("up ")]
    assert [step[2] for step in steps] == case.ups  # the tool's own order
    for line in planned.stdout.splitlines():
        file = line.split()[2]
        if file in case.outside:
            assert line.endswith(f"(outside a transaction: {case.outside[file]})"), line
        else:
            assert "outside" not in line, line

    applied = migrate(env, "apply")
    assert applied.returncode == 0, applied.stderr
    assert [line.split()[:3] for line in applied.stdout.splitlines()] == [
        ["done", "up", file] for file in case.ups
    ]
    assert schema_of(pair, database) == applied_by_hand
    again = migrate(env, "apply")
    assert (again.returncode, again.stdout) == (0, "nothing to do\n")

    settings = settings_for(pair, database, migrations_dir=folder)
    async with serving_ready(settings) as (_, client):
        status = (await client.get("/v1/migrations")).json()
        assert (status["format"], status["pending"]) == (case.format, 0)
        assert {v["state"] for v in status["versions"]} == {"applied"}

        rolled = await client.post("/v1/migrations/rollback", json={"target": case.target})
        assert rolled.status_code == 200, rolled.text
        assert [s["file"] for s in rolled.json()["steps"]] == case.downs
        assert schema_of(pair, database) == rolled_back_by_hand

        reapplied = await client.post("/v1/migrations/apply")
        assert reapplied.status_code == 200, reapplied.text
        assert schema_of(pair, database) == applied_by_hand
        assert (await client.post("/v1/migrations/apply")).json()["steps"] == []


async def test_editing_a_repeatable_script_runs_it_again(
    pair: LocalPair, database: str, tmp_path: Path
) -> None:
    folder = tmp_path / "flyway"
    shutil.copytree(FOLDERS / "flyway", folder)
    view = folder / "R__user_summary.sql"
    settings = settings_for(pair, database, migrations_dir=folder)
    async with serving_ready(settings) as (_, client):
        first = (await client.post("/v1/migrations/apply")).json()["steps"]
        assert first[-1]["file"] == "R__user_summary.sql"
        assert first[-1]["repeatable"] is True

        view.write_text(
            view.read_text().replace("count(o.id) AS orders", "count(o.id) AS orders, "
                                     "coalesce(sum(o.total), 0) AS spent")
        )  # fmt: skip
        status = (await client.get("/v1/migrations")).json()
        summary = next(v for v in status["versions"] if v["repeatable"])
        assert (summary["name"], summary["state"], status["pending"]) == (
            "user summary", "pending", 1,
        )  # fmt: skip
        plan = (await client.get("/v1/migrations/plan")).json()["steps"]
        assert [(s["file"], s["direction"]) for s in plan] == [("R__user_summary.sql", "up")]

        rerun = await client.post("/v1/migrations/apply")  # no repair needed
        assert rerun.status_code == 200, rerun.text
        assert [s["file"] for s in rerun.json()["steps"]] == ["R__user_summary.sql"]
        with pair.primary.connect(database) as conn:
            columns = conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'user_summary'::regclass"
                " AND attnum > 0 ORDER BY attnum"
            ).fetchall()
        assert [c for (c,) in columns] == ["id", "email", "orders", "spent"]
        assert (await client.post("/v1/migrations/apply")).json()["steps"] == []
        status = (await client.get("/v1/migrations")).json()
        assert status["pending"] == 0
        assert {v["state"] for v in status["versions"]} == {"applied"}
