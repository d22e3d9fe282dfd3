"""Pass 41: behind PgBouncer, a failed request's roll_back (app/sql/pgbouncer.py) runs with no
statement timeout: code that left work for it (statements it PREPAREd, which a ROLLBACK does
not undo) holds the pooler's only server connection past the request's own timeout, until
mirrorpool's deadline (timeout + 1 s) cancels it; and when that cancel lands in the query,
the server session may go back to the pooler holding what the code left (its session
advisory lock, the rest of its statements).

    owner:  hoard41(n), SECURITY DEFINER: pg_advisory_lock(4141), then n statements
            PREPAREd by EXECUTE (code that caches its queries by name, say)
            probe41(), SECURITY DEFINER: count(*) FROM pg_prepared_statements
    key A:  SELECT hoard41(100000000), timeout_ms 2000
                -> its statement times out at 2 s (~100 k statements PREPAREd); roll_back's
                   DEALLOCATE loop then runs until A's deadline: 504 after 3.1 s
    key B:  SELECT probe41(), timeout_ms 1000, sent as A's roll_back starts
                -> 200 after 0.97-0.98 s (3 runs of 3), instead of at once

And the server session may go back to the pooler unclean. Where the login has a statement
timeout of its own shorter than the deadline's grace (ALTER ROLE ... SET statement_timeout
= '500ms'), that timeout, the one in force after the ROLLBACK, stops the loop at 2.5 s, with
no race (3 runs of 3):

    key A:  SELECT hoard41(100000000), timeout_ms 2000 -> 504 after 2.6 s
    then:   the pooler's only server session sits idle with lock 4141 held (another
            session's pg_try_advisory_lock(4141) is refused) and the rest of A's statements
    key B:  SELECT probe41(), timeout_ms 200
                -> 504 after 0.33-0.44 s: "canceling statement due to statement timeout",
                   in B's opening, dropping A's statements (PL/pgSQL inline_code_block
                   "at FOR over SELECT rows")

Without that setting, the deadline's cancel does the same when it lands in the loop and the
backend's answer beats mirrorpool's shut: 2 runs of 9 here (B sent once A's answer is in).

Root cause: roll_back sends "ROLLBACK; <DEALLOCATE loop>; DISCARD SEQUENCES; SELECT
pg_advisory_unlock_all(), setseed(...)" as one simple query. PostgreSQL ends the statement
timeout with the ROLLBACK (exec_simple_query: finish_xact_command after a transaction
statement disables it) and arms none for the statements after it (the SET LOCAL went with
the transaction), so the loop over the code's statements is bounded only by mirrorpool's
deadline. Its cancel makes the simple query stop at that error: the unlock and the reseed
never run, and the backend answers ReadyForQuery idle, which PgBouncer in transaction mode
takes as the end of the client's use of the server. Unlike finish, nothing after the
ROLLBACK ends an unclean session (no exit_on_error, no mark).

Fixed (app/sql/pgbouncer.py roll_back): the ROLLBACK is followed by the units that follow
finish's end: exit_on_error, the cleanup under the request's timeout, the unit that ends an
unclean session. The drops keep to A's timeout (B, sent during them, 200 after 0.6 s with no
statement of A's left); a cut cleanup ends its backend (A's lock gone, B 200 with none).
And the code's statements drop at once (DEALLOCATE ALL) where no pooler's own are there.
"""

from __future__ import annotations

import time
from pathlib import Path

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import b_while_a_cleans, beside_one_server_connection, locks_on, query
from tests.waiting import eventually, eventually_sync

LOCK = 4141
SETUP = (
    "CREATE FUNCTION hoard41(n int) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$"
    f" BEGIN PERFORM pg_catalog.pg_advisory_lock({LOCK});"
    " FOR i IN 1..n LOOP"
    " EXECUTE pg_catalog.format('PREPARE hoard41_%s AS SELECT %s', i, i); END LOOP;"
    " RETURN n; END $$",
    f"GRANT EXECUTE ON FUNCTION hoard41(int) TO {SERVICE}",
    "CREATE FUNCTION probe41() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS"
    " $$ SELECT count(*) FROM pg_catalog.pg_prepared_statements $$",
    f"GRANT EXECUTE ON FUNCTION probe41() TO {SERVICE}",
)
TEARDOWN = ("DROP FUNCTION IF EXISTS hoard41(int)", "DROP FUNCTION IF EXISTS probe41()")


def _busy(pair: LocalPair) -> bool:
    """Whether a backend of the service's login runs a statement."""
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND state = 'active'",
            [SERVICE],
        ).fetchone()
    return row is not None and row[0] > 0


def _lock_free(pair: LocalPair) -> bool:
    """Whether another session may take lock LOCK now (it is let go at once)."""
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s) AND pg_advisory_unlock(%s)", [LOCK, LOCK]
        ).fetchone()
    return row is not None and bool(row[0])


# A's statement failed; roll_back's cleanup drops the code's statements.
ROLLING_BACK = (
    "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND usename = %s"
    " AND query LIKE '%%DO $$ DECLARE n text;%%'"
)


async def test_a_roll_back_holds_the_server_connection_past_the_timeout(
    pair: LocalPair, work_dir: Path
) -> None:
    async with beside_one_server_connection(pair, work_dir, SETUP, TEARDOWN, LOCK) as (
        _,
        client,
    ):
        seen = await b_while_a_cleans(
            pair, client, "SELECT hoard41(100000000)", ROLLING_BACK, "SELECT probe41()"
        )
        a, a_took, b, b_took = seen.a, seen.a_took, seen.b, seen.b_took
        eventually_sync(lambda: not _busy(pair), "the server session to go idle")
        held = locks_on(pair, LOCK)
        said = (
            f"A {a.status_code} after {a_took:.1f} s; B {b.status_code} after {b_took:.2f} s"
            f" ({b.text[:120]}); then lock {LOCK} held by {held} idle session(s)"
        )
        print(said)
        assert a.status_code == 504, f"{said}: {a.text}"
        assert b.status_code == 200, said
        assert b.json()["rows"] == [["0"]], said
        # (B waits for A's cleanup, which keeps to A's own timeout, 1 s, and is answered
        # within its own deadline: 200)
        assert b_took < 2.0, said
        assert held == 0 and _lock_free(pair), f"{said}: A's session lock outlived A"


async def test_a_roll_back_cut_by_the_logins_timeout_hands_on_an_unclean_session(
    pair: LocalPair, work_dir: Path, restore_login: None
) -> None:
    """The login's own statement_timeout (ALTER ROLE ... SET, shorter than the deadline's
    grace) cuts roll_back's loop after the ROLLBACK, with no race: its error, answered
    before any deadline, stops the query before the unlock."""
    with pair.primary.connect() as conn:
        conn.execute(f"ALTER ROLE {SERVICE} SET statement_timeout = '500ms'")
    async with beside_one_server_connection(pair, work_dir, SETUP, TEARDOWN, LOCK) as (
        _,
        client,
    ):
        started = time.monotonic()
        a = await query(client, "write", "SELECT hoard41(100000000)", timeout_ms=2000)
        a_took = time.monotonic() - started
        eventually_sync(lambda: not _busy(pair), "the server session to go idle")
        held = locks_on(pair, LOCK)
        free = _lock_free(pair)

        async def ready() -> bool:
            # (A held the pooler's one server connection for 3 s: its health probes failed)
            return (await client.get("/health/ready")).status_code == 200

        await eventually(ready, "the primary to be up again", 10)
        started = time.monotonic()
        b = await query(client, "read", "SELECT probe41()", timeout_ms=200)
        b_took = time.monotonic() - started
        said = (
            f"A {a.status_code} after {a_took:.1f} s; then lock {LOCK} held by {held}"
            f" idle session(s); B {b.status_code} after {b_took:.2f} s ({b.text[-160:]})"
        )
        print(said)
        assert held == 0 and free, f"{said}: A's session lock outlived its request"
        assert b.status_code == 200, said
        assert b.json()["rows"] == [["0"]], said
        assert b_took < 0.2, said
