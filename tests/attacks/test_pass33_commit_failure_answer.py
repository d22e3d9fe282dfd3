"""Seen in the thirty-third review pass, on the attacker's own request: a write run on its
own (autocommit, on a session of our own) whose deferred constraint trigger fails at the
implicit commit was answered 503 outcome-unknown ("the pipeline ended before its last
Sync ... may or may not have committed"), though PostgreSQL rolled it back.

The trigger defers its next event again (SET CONSTRAINTS ALL DEFERRED, past the IMMEDIATE
that runs before a write), so the event fires at the unit's Sync, where the commit is.
PostgreSQL then answers the Sync with an error and ReadyForQuery; libpq hands the error
back where the Sync's result would be, and the pipeline's reader took that for a broken
pipeline. Fixed (app/sql/pipeline/reading.py read): an error in place of a unit's Sync is
that unit's commit failing, reported as its last command's error, and the Sync that follows
is read as usual. The write's answer is the trigger's own error (400), and its row is not
there.
"""

from __future__ import annotations

import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import attacked_on, query
from tests.attacks.test_pass33_tried import FLOOD_SETUP, FLOOD_TEARDOWN

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.parametrize("rounds", [1, 6])  # (the sixth on a statement prepared by name)
async def test_a_write_whose_commit_fails_is_answered_with_its_error(
    pair: LocalPair, rounds: int
) -> None:
    async with attacked_on(pair, FLOOD_SETUP, FLOOD_TEARDOWN) as client:
        for _ in range(rounds):
            r = await query(client, "write", "INSERT INTO t33 VALUES (2, '1')")
            assert r.status_code == 400, r.text
            assert "refused" in r.text, r.text
            assert r.json().get("sqlstate") == "P0001", r.text
        count = await query(client, "admin", "SELECT count(*)::int AS n FROM t33")
        assert count.json()["rows"] == [[0]], count.text
        after = await query(client, "write", "SELECT 1 AS one")
        assert after.json()["rows"] == [[1]], after.text
