"""Seventh review pass (attacker), PgBouncer mode (MIRRORPOOL_PGBOUNCER=true).

A temporary object is allowed there only when it goes at the end of its transaction (ON COMMIT
DROP, app/sql/transaction_pooling.py), and what is temporary is read from each statement on its
own (TEMP, or a name in pg_temp). But PostgreSQL makes temporary more than the statements that
say so, and what goes with an ON COMMIT DROP table is only what still depends on it at commit:

- `CREATE TEMP TABLE x (id serial) ON COMMIT DROP` makes a temporary sequence owned by the
  column, dropped with the table;
- `ALTER SEQUENCE x_id_seq OWNED BY NONE` (no TEMP, no pg_temp in its tree) cuts that tie: the
  temporary sequence now outlives the transaction on the server connection;
- `CREATE VIEW pub AS SELECT ... FROM x_id_seq` (no TEMP either) is made a temporary view by
  PostgreSQL itself ("view "pub" will be a temporary view": it reads a temporary relation), and
  it depends only on the sequence that stays.

Both stay on the PgBouncer server connection, and pg_temp is searched first for relations:
every later client of that server connection reads the attacker's `pub` instead of the
schema's (and its INSERTs fail), until the server connection ends."""

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
    """One server connection behind PgBouncer, every request sharing it; one per test."""
    with LocalPgBouncer(
        pair, work_dir / f"attack7-bouncer-{uuid.uuid4().hex[:6]}", pool_size=1
    ) as b:
        yield b


DETACH = [
    "CREATE TEMP TABLE mp_x (id serial) ON COMMIT DROP",
    "ALTER SEQUENCE mp_x_id_seq OWNED BY NONE",
]


async def test_a_view_over_a_detached_temporary_sequence_does_not_answer_for_pub(
    behind: httpx.AsyncClient,  # noqa: F811
) -> None:
    before = await query(behind, "admin", "SELECT v FROM pub WHERE id = 1")
    assert before.json()["rows"] == [["public"]], before.text
    attack = await transaction(
        behind,
        "write",
        *DETACH,
        "CREATE VIEW pub AS SELECT 1 AS id, 'spoofed-by-writer'::text AS v FROM mp_x_id_seq",
    )
    assert attack.status_code in (200, 400), attack.text  # (a refusal is a fix)
    victim = await query(behind, "admin", "SELECT v FROM pub WHERE id = 1")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["public"]], "another client's temporary view answers"


async def test_a_detached_temporary_sequence_does_not_stay_on_the_server_connection(
    behind: httpx.AsyncClient,  # noqa: F811
) -> None:
    attack = await transaction(behind, "write", *DETACH, "ALTER SEQUENCE mp_x_id_seq RENAME TO pub")
    assert attack.status_code in (200, 400), attack.text
    left = await query(
        behind,
        "admin",
        "SELECT count(*)::int FROM pg_catalog.pg_class WHERE relnamespace = pg_my_temp_schema()",
    )
    assert left.status_code == 200, left.text
    assert left.json()["rows"] == [[0]], "a temporary relation outlived its transaction"
    victim = await query(behind, "admin", "SELECT v FROM pub WHERE id = 1")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["public"]], victim.text
