"""Pass 38, its second hole: behind PgBouncer, a failed cleanup's server session, which the
unit after it is to end, waited instead, and kept the pooler's server connection from the
next key.

    owner:  leave38(), SECURITY DEFINER: CREATE TEMP TABLE c38 () INHERITS (parent38);
            set_config(..., false) of default_transaction_isolation 'serializable',
            default_transaction_read_only on, default_transaction_deferrable on;
            pg_sleep(0.5)
    other:  a serializable transaction that wrote (another table), left open
    other:  LOCK TABLE parent38 IN ACCESS EXCLUSIVE MODE while A's function sleeps, held
    key A:  SELECT leave38()                     -> 200
    key B:  SELECT probe38()                     (the pooler's one server connection)

A's cleanup waits for the parent past its lock timeout and fails; its RESET ALL is rolled
back with it, so the unit that ends the unclean session runs in a transaction of the code's
defaults: its DO block's snapshot waited for a safe one, until the other serializable
transaction ended. Mirrorpool had shut its socket, but the backend lived on, waiting, and
PgBouncer kept its one server connection for it: B was answered 503 ("no node is reachable
for reads"). Observed in 2 runs out of 3 (in some rounds the cleanup runs before the lock is
granted, and succeeds).

Fixed: that unit, too, first sets its transaction's isolation (SET TRANSACTION ISOLATION
LEVEL READ COMMITTED), so the DO block ends the backend at once."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from app.devdb import LocalPair
from tests.attacks.conftest import beside_one_server_connection
from tests.attacks.test_pass36_unclean_session_spared import ROUNDS, a_cleanup_cut_short
from tests.attacks.test_pass38_tried import SETUP, TEARDOWN


async def test_a_failed_cleanup_under_serializable_defaults_ends_its_session_at_once(
    pair: LocalPair, work_dir: Path
) -> None:
    # The code leaves the defaults and a temporary child; another session's lock makes the
    # cleanup fail (its RESET ALL goes with it), and another session's serializable
    # transaction stays open: the unit that ends the unclean session would wait for a safe
    # snapshot. A is answered all the same, and the next key, on the one server connection,
    # runs on a fresh session.
    async with beside_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as (_, client):
        other = await psycopg.AsyncConnection.connect(pair.primary.dsn(), autocommit=True)
        serializable = await psycopg.AsyncConnection.connect(pair.primary.dsn())
        try:
            await serializable.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            await serializable.execute("INSERT INTO w38 VALUES (1)")
            for _ in range(ROUNDS):
                started = time.monotonic()
                answer, b = await a_cleanup_cut_short(
                    pair, client, other, "leave38", "parent38", "SELECT probe38()"
                )
                took = time.monotonic() - started
                assert answer.status_code == 200, answer.text
                assert took < 3, f"A's answer took {took:.1f} s"
                assert b.status_code == 200, b.text
                assert b.json()["rows"] == [["read committed false"]], b.text
        finally:
            await serializable.rollback()
            await serializable.close()
            await other.close()
