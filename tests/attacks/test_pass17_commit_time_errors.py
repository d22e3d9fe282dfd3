"""Seventeenth review pass (attacker): an error PostgreSQL raises at a plain write's commit is
read as a lost connection.

A plain write (autocommit) is sent as its statement and a Sync, in libpq's pipeline mode
(the plain path and the lanes). A DEFERRABLE INITIALLY DEFERRED constraint is checked at the
commit, which PostgreSQL runs at the Sync: the statement itself succeeds (INSERT 0 1), then
the commit fails (23503) and is rolled back. The pipeline reader finds no result group where
it waits for the Sync's and raises "the pipeline ended before its last Sync"
(app/sql/pipeline/reading.py collect/read), so the write key is answered 503 outcome-unknown,
"the write may or may not have committed", not retryable, for a write PostgreSQL has told
us it undid and why; the connection is closed (the pool logs in again), the node is reported
to the monitor as possibly failed (probe_soon), and in a lane every other job of that batch
gets the same answer (writes) or the error (reads). A key can do it in a loop:

    POST /v1/query {"sql": "INSERT INTO child17b VALUES ($1::int)", "params": [99999]}

with child17b.parent REFERENCES parent17b DEFERRABLE INITIALLY DEFERRED and no parent 99999.
A deferred unique constraint (23505) does the same, and so would a serialization failure
at commit under a database whose default isolation is serializable (40001, retryable).
/v1/transaction and POST /sql (COMMIT sent as a statement) answer 409 with the error: the
control cases below, which hold.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import headers, query, transaction
from tests.attacks.test_pass13_lane_write_after_deadline import lane_statements
from tests.conftest import as_owner
from tests.waiting import eventually

INSERT = "INSERT INTO child17b VALUES ($1::int)"


@pytest.fixture
def overrides(pair: LocalPair, world: dict[str, str]) -> dict[str, Any]:
    as_owner(
        pair,
        "DROP TABLE IF EXISTS child17b, parent17b",
        "CREATE TABLE parent17b (id int PRIMARY KEY)",
        "CREATE TABLE child17b (parent int REFERENCES parent17b DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO parent17b VALUES (1)",
        "DROP TABLE IF EXISTS unique17",
        "CREATE TABLE unique17 (a int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO unique17 VALUES (1)",
    )
    return {"multiplex_quick_ms": 50, "multiplex_writes": True}


def orphans(pair: LocalPair) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM child17b WHERE parent > 1").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("path", ["plain", "lane", "transaction", "sql"])
async def test_a_failed_commit_is_answered_with_its_error(
    client: httpx.AsyncClient, pair: LocalPair, path: str
) -> None:
    if path == "lane":

        async def in_lane() -> bool:
            before = await lane_statements(client)
            r = await query(client, "write", INSERT, params=[1])
            assert r.status_code == 200, r.text
            return await lane_statements(client) > before

        await eventually(in_lane, "the insert to join the lane", timeout=20)
    if path in ("plain", "lane"):
        r = await query(client, "write", INSERT, params=[99999])
    elif path == "transaction":
        r = await transaction(client, "write", "INSERT INTO child17b VALUES (99999)")
    else:
        body = {"query": "INSERT INTO child17b VALUES (99999)"}
        r = await client.post("/sql", json=body, headers=headers("write"))
    assert r.status_code in (400, 409), (r.status_code, r.text)
    assert "23503" in r.text or "foreign key" in r.text, r.text
    assert orphans(pair) == 0
    v = await query(client, "admin", "SELECT v FROM pub WHERE id = 1")
    assert v.status_code == 200 and v.json()["rows"] == [["public"]], v.text


async def test_a_failed_deferred_unique_check_is_answered_with_its_error(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    r = await query(client, "write", "INSERT INTO unique17 VALUES ($1::int)", params=[1])
    assert r.status_code in (400, 409), (r.status_code, r.text)
    assert "23505" in r.text or "duplicate key" in r.text, r.text
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM unique17").fetchone()
    assert row is not None and row[0] == 1
