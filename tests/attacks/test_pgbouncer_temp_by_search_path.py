"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Third review pass. Behind PgBouncer (MIRRORPOOL_PGBOUNCER=true) a temporary object is
refused unless it goes ON COMMIT DROP (app/sql/transaction_pooling.py), since nothing is
reset in a server session the pooler's other clients get next. What is temporary is read
from the statement (TEMP, or a name in pg_temp): with pg_temp first on the transaction's
search_path (SET LOCAL search_path, or set_config('search_path', ..., true), both allowed
there), an unqualified CREATE TABLE, CREATE DOMAIN or CREATE FUNCTION lands in pg_temp all
the same, and stays on the server connection. A temporary table named like one of the
schema's tables, or a domain named `text`, then answers for it in every later client's
statements (PostgreSQL searches pg_temp first for relations and types)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import query, transaction
from tests.attacks.test_pgbouncer_sessions import behind  # noqa: F401
from tests.pgbouncer import LocalPgBouncer


@pytest.fixture
def bouncer(pair: LocalPair, work_dir: Path) -> Iterator[LocalPgBouncer]:
    """One server connection behind PgBouncer, every request sharing it; one per test, so
    that what a test leaves on it reaches no other test."""
    with LocalPgBouncer(
        pair, work_dir / f"attack3-bouncer-{uuid.uuid4().hex[:6]}", pool_size=1
    ) as b:
        yield b


PG_TEMP_FIRST = [
    "SET LOCAL search_path = pg_temp",
    "SELECT set_config('search_path', 'pg_temp', true)",
]


@pytest.mark.parametrize("first", PG_TEMP_FIRST, ids=["set-local", "set-config"])
async def test_a_temporary_table_made_by_search_path_does_not_answer_for_another_clients(
    behind: httpx.AsyncClient,  # noqa: F811
    first: str,
) -> None:
    attack = await transaction(
        behind,
        "write",
        first,
        "CREATE TABLE pub (id int, v text)",
        "INSERT INTO pub VALUES (1, 'spoofed-by-writer')",
    )
    assert attack.status_code in (200, 400), attack.text  # (a refusal is a fix)
    victim = await query(behind, "admin", "SELECT v FROM pub WHERE id = 1")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["public"]], victim.text


async def test_a_temporary_type_made_by_search_path_does_not_reach_other_clients(
    behind: httpx.AsyncClient,  # noqa: F811
) -> None:
    attack = await transaction(
        behind, "write", PG_TEMP_FIRST[0], "CREATE DOMAIN text AS pg_catalog.varchar(3)"
    )
    assert attack.status_code in (200, 400), attack.text
    victim = await query(behind, "admin", "SELECT v::text AS v FROM pub WHERE id = 1")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["public"]], victim.text
    assert victim.json()["columns"][0]["type"] == "text", victim.text
