"""Twentieth review pass (attacker): a write made by the database's own code, called from a
statement the parse tree does not see as changing data, still checks its deferred
constraints at the commit, outside every statement timeout.

Pass 17 made a plain write (INSERT, UPDATE, DELETE, MERGE, a writing CTE, SELECT INTO) run
after `SET CONSTRAINTS ALL IMMEDIATE` in its own unit (app/sql/plain.py IMMEDIATE,
changes_data). A `SELECT f($1)` or `CALL p($1)` whose function or procedure deletes rows is
not such a statement: its deferred foreign-key checks run at the Sync, where PostgreSQL has
ended the statement timeout (finish_xact_command). The server runs them until mirrorpool's
own guard cuts the connection at the deadline plus its grace: the key is answered 503
outcome-unknown ("may or may not have committed") for a write the server would have stopped
and undone, its connection is ended and opened again, and the server ran past its time:

    SELECT del20($1::int)       params [2000]     (del20: DELETE FROM parent20 WHERE id <= n)
    CALL del20p($1::int)        params [2000]

Any function or procedure of the database's own that writes to a table with a DEFERRABLE
INITIALLY DEFERRED constraint will do (a DO block is refused).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import query, transaction
from tests.conftest import as_owner

TIMEOUT_MS = 500
SPELLINGS = (
    "SELECT del20($1::int)",
    "CALL del20p($1::int)",
)


@pytest.fixture
def overrides(pair: LocalPair, world: dict[str, str]) -> dict[str, Any]:
    as_owner(
        pair,
        "DROP TABLE IF EXISTS child20, parent20",
        "CREATE TABLE parent20 (id int PRIMARY KEY)",
        "CREATE TABLE child20 (parent int REFERENCES parent20 DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO parent20 SELECT g FROM generate_series(1, 3000) g",
        "INSERT INTO child20 SELECT 3000 FROM generate_series(1, 50000)",
        "ANALYZE parent20",
        "ANALYZE child20",
        "CREATE OR REPLACE FUNCTION public.del20(n int) RETURNS bigint LANGUAGE sql AS"
        " $$ WITH d AS (DELETE FROM parent20 WHERE id <= n RETURNING 1)"
        " SELECT count(*) FROM d $$",
        "CREATE OR REPLACE PROCEDURE public.del20p(n int) LANGUAGE sql AS"
        " $$ DELETE FROM parent20 WHERE id <= n $$",
    )
    return {"statement_timeout_ms": TIMEOUT_MS}


def parents(pair: LocalPair) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM parent20").fetchone()
    return int(row[0]) if row else 0


async def test_deferred_checks_of_a_called_write_stop_within_the_statement_timeout(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    answers: dict[str, tuple[int, object, float, int]] = {}
    for sql in SPELLINGS:
        started = time.monotonic()
        r = await query(client, "write", sql, params=[2000])
        took = time.monotonic() - started
        answers[sql] = (r.status_code, r.json().get("retryable"), round(took, 2), parents(pair))
    for status, retryable, took, left in answers.values():
        # stopped by the server within its time, undone, and not "may have committed"
        assert status == 504 and retryable is not False, answers
        assert took < TIMEOUT_MS / 1000 + 0.5, answers
        assert left == 3000, answers
    after = await transaction(client, "write", "SELECT count(*) AS n FROM parent20")
    assert after.status_code == 200, after.text
