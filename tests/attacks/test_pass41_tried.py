"""Forty-first review pass (attacker), what held.

Behind PgBouncer, around the pin of pass 40 (app/sql/pgbouncer.py _PIN_LOCAL_BUFFERS_SQL),
with the functions of test_pass40_unbounded_drop.py (make40: temp_buffers 32GB, then
temporary tables; past40: the same, going on past the setting's refusal):

- a 1 ms timeout that cuts the pin: the request fails (504), its transaction and the temp
  namespace the pin made go with it, and the next request's pin runs again: make40(300)
  is still refused (400, temp_buffers), and the next key is answered at once.
- a read-only transaction, which skips the pin: the code cannot make its temporary tables
  there (PostgreSQL refuses CREATE TABLE in a read-only transaction, and refuses
  SET LOCAL transaction_read_only = off once the opening has taken a snapshot), so no local
  buffers are made; the setting it raised goes with the cleanup's RESET ALL, and the next
  write's code is refused its 32GB.
- many temporary tables at the usual temp_buffers (1 024 buffers): 800 tables made within a
  1000 ms timeout (A 200 after 0.8-0.9 s) drop in the cleanup within it; the commit that
  deletes their files (no timeout there) takes about a tenth of the time that made them
  (scratch cluster: 4 000 tables made in 3.1 s, DISCARD TEMP 0.9 s, its commit 0.4 s). The
  next key, sent as the cleanup starts, is answered in 0.03-0.05 s.
- statements the code PREPAREd, in a request that succeeds: the cleanup's DEALLOCATE loop
  runs under the cleanup's limits (the request's statement timeout), so the next key, sent
  as the cleanup starts, waits for it within A's timeout: PREPARE costs more than
  DEALLOCATE (about 18 and 12 us a statement at 200 k), so what A made within its
  statement's time drops within the cleanup's: 70 k statements, A 200 after 1.1-1.2 s of a
  1000 ms timeout, B (sent as the loop starts) 200 after 0.35-0.43 s. Unlike after a
  ROLLBACK (test_pass41_rollback_cut.py), where nothing bounds the loop.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import (
    b_while_a_cleans,
    beside_one_server_connection,
    query,
    transaction,
)
from tests.attacks.test_pass40_unbounded_drop import CLEANING, SETUP, TEARDOWN
from tests.attacks.test_pass41_rollback_cut import SETUP as PREPARE_SETUP
from tests.attacks.test_pass41_rollback_cut import TEARDOWN as PREPARE_TEARDOWN


async def test_a_pin_cut_by_a_1_ms_timeout_runs_again_next_time(
    pair: LocalPair, work_dir: Path
) -> None:
    async with beside_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as (_, client):
        for _round in range(5):
            cut = await query(client, "write", "SELECT make40(300)", timeout_ms=1)
            assert cut.status_code in (400, 504), cut.text
            await refused_then_b_at_once(client)


async def refused_then_b_at_once(client: httpx.AsyncClient) -> None:
    """make40's temp_buffers is refused (the pin held), and B is answered at once."""
    a = await query(client, "write", "SELECT make40(300)", timeout_ms=1000)
    assert a.status_code == 400, a.text
    assert "temp_buffers" in a.json()["detail"], a.text
    started = time.monotonic()
    b = await query(client, "read", "SELECT 1", timeout_ms=1000)
    assert b.status_code == 200, b.text
    assert time.monotonic() - started < 0.5


async def test_a_read_only_transaction_makes_no_local_buffers(
    pair: LocalPair, work_dir: Path
) -> None:
    async with beside_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as (_, client):
        read = await query(client, "read", "SELECT make40(300)", timeout_ms=1000)
        assert 400 <= read.status_code < 500, read.text
        assert "read-only" in read.text, read.text
        flipped = await transaction(
            client,
            "read",
            "SET LOCAL transaction_read_only = off",
            "SELECT make40(300)",
            timeout_ms=1000,
        )
        assert 400 <= flipped.status_code < 500, flipped.text
        await refused_then_b_at_once(client)


async def test_many_temporary_tables_at_the_usual_buffers_spare_the_next_key(
    pair: LocalPair, work_dir: Path
) -> None:
    async with beside_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as (_, client):
        seen = await b_while_a_cleans(pair, client, "SELECT past40(800)", CLEANING)
        a, a_took, b, b_took, said = seen.a, seen.a_took, seen.b, seen.b_took, seen.said
        print(said)
        assert a.status_code in (200, 504), f"{said}: {a.text}"
        assert b.status_code == 200, f"{said}: {b.text}"
        assert b_took < 0.5, said
        assert a_took < 2.5, said


# The cleanup's DEALLOCATE loop runs (its own statement in finish's pipeline).
DEALLOCATING = (
    "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND usename = %s"
    " AND query LIKE 'DO $$ DECLARE n text;%%'"
)


async def test_statements_prepared_by_code_drop_within_the_cleanups_timeout(
    pair: LocalPair, work_dir: Path
) -> None:
    setup = (
        *PREPARE_SETUP,
        "CREATE FUNCTION prep41(n int) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$"
        " BEGIN FOR i IN 1..n LOOP"
        " EXECUTE pg_catalog.format('PREPARE prep41_%s AS SELECT %s', i, i); END LOOP;"
        " RETURN n; END $$",
        f"GRANT EXECUTE ON FUNCTION prep41(int) TO {SERVICE}",
    )
    teardown = ("DROP FUNCTION IF EXISTS prep41(int)", *PREPARE_TEARDOWN)
    async with beside_one_server_connection(pair, work_dir, setup, teardown) as (_, client):
        seen = await b_while_a_cleans(
            pair, client, "SELECT prep41(70000)", DEALLOCATING, "SELECT probe41()"
        )
        a, a_took, b, b_took, said = seen.a, seen.a_took, seen.b, seen.b_took, seen.said
        print(said)
        assert a.status_code == 200, f"{said}: {a.text}"
        assert b.status_code == 200, f"{said}: {b.text}"
        assert b.json()["rows"] == [["0"]], said
        assert b_took < 1.0, said
        assert a_took < 2.5, said
