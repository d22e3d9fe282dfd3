"""Seventeenth review pass (attacker): a write's deferred constraint checks run at its commit,
outside its statement timeout, in the lanes and the plain path.

A plain write (autocommit) is sent as its statement and a Sync: the implicit transaction
commits at the Sync, and PostgreSQL runs the checks of DEFERRABLE INITIALLY DEFERRED
constraints there, after the statement's Execute, where no statement_timeout runs (neither
the session's nor the lane's SET LOCAL one: it bounds each Execute). So a write that is
quick itself (it joins the lane) but leaves slow checks for its commit runs on the server
until mirrorpool's own guard cuts the connection at the deadline plus its grace: the key is
answered 503 outcome-unknown ("may or may not have committed") for a write the server would
have stopped and undone, its connection is ended and opened again, and the server ran it
past its time. A deleted parent row whose deferred foreign key has no index on the child's
column costs one scan of the child table per row at commit:

    DELETE FROM parent17 WHERE id <= $1::int      params [0] until it joins the lane, then [2000]

PostgreSQL ends every statement timeout before a commit's work (finish_xact_command), so even
/v1/transaction's COMMIT runs its deferred checks unbounded; there mirrorpool cancels it at the
deadline plus the grace and answers 504, undone (the control case below, which holds). In
the lanes and the plain path the guard cuts the connection instead. Single-statement units
could check their deferred constraints inside the statement (SET CONSTRAINTS ALL IMMEDIATE
with the write's limits: the same outcome for one statement), where the timeout runs.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import headers, query, transaction
from tests.attacks.test_pass13_lane_write_after_deadline import lane_statements
from tests.conftest import as_owner
from tests.waiting import eventually

TIMEOUT_MS = 500
DELETE = "DELETE FROM parent17 WHERE id <= $1::int"


@pytest.fixture
def overrides(pair: LocalPair, world: dict[str, str]) -> dict[str, Any]:
    as_owner(
        pair,
        "DROP TABLE IF EXISTS child17, parent17",
        "CREATE TABLE parent17 (id int PRIMARY KEY)",
        "CREATE TABLE child17 (parent int REFERENCES parent17 DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO parent17 SELECT g FROM generate_series(1, 3000) g",
        "INSERT INTO child17 SELECT 3000 FROM generate_series(1, 100000)",
        "ANALYZE parent17",
        "ANALYZE child17",
    )
    return {"statement_timeout_ms": TIMEOUT_MS, "multiplex_quick_ms": 50, "multiplex_writes": True}


def parents(pair: LocalPair) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM parent17").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("path", ["lane", "plain", "transaction"])
async def test_deferred_checks_stop_within_the_statement_timeout(
    client: httpx.AsyncClient, pair: LocalPair, path: str
) -> None:
    if path == "lane":

        async def in_lane() -> bool:
            before = await lane_statements(client)
            r = await query(client, "write", DELETE, params=[0])
            assert r.status_code == 200, r.text
            return await lane_statements(client) > before

        await eventually(in_lane, "the delete to join the lane", timeout=20)
    started = time.monotonic()
    if path == "transaction":
        body = {"statements": [{"sql": DELETE, "params": [2000]}]}
        r = await client.post("/v1/transaction", json=body, headers=headers("write"))
    else:  # the plain path: a text never seen before
        r = await query(client, "write", DELETE, params=[2000])
    took = time.monotonic() - started
    assert r.status_code == 504, (r.status_code, r.text)  # stopped by the server, undone
    assert r.json().get("retryable") is not False, r.text  # not "may have committed"
    assert parents(pair) == 3000
    if path != "transaction":
        # (a transaction's COMMIT is cancelled by mirrorpool at its deadline plus the grace:
        # PostgreSQL's statement timeout ends before a commit's deferred checks everywhere)
        assert took < TIMEOUT_MS / 1000 + 0.5, f"answered after {took:.2f} s"
    after = await transaction(client, "write", "SELECT count(*) AS n FROM parent17")
    assert after.status_code == 200, after.text
