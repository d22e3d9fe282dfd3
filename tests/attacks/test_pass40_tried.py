"""Fortieth review pass (attacker), what held.

Behind PgBouncer (app/sql/pgbouncer.py finish: the end, the unit that sets exit_on_error,
the cleanup, the ending unit in one pipeline write):

- exit_on_error never reaches the next key: after code of the owner's ran (the cleanup
  runs, its unit sets exit_on_error, its RESET ALL turns it off), the next key's own error
  (a division by zero) is answered as an error and the server session lives on: the key
  after reads the same backend, with exit_on_error off. Also when the code itself set
  exit_on_error on for the session (set_config(..., false)): RESET ALL resets it to the
  login's default.

On sessions of mirrorpool's own (app/sql/session.py restore):

- the temporary tables of test_pass40_unbounded_drop.py (150 of them, under a 32GB
  temp_buffers) do not hold the next key: the connection is closed after A (code left
  temporary tables), its backend drops them as it exits, on its own, and B, on the pool's
  new connection, is answered at once (A 200 in 0.8 s, B 200 in 0.04 s).
"""

from __future__ import annotations

import time
from pathlib import Path

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, beside_one_server_connection, query
from tests.attacks.test_pass40_unbounded_drop import SETUP as DROP_SETUP
from tests.attacks.test_pass40_unbounded_drop import TEARDOWN as DROP_TEARDOWN

EXIT_SETUP = (
    "CREATE FUNCTION exit40(keep boolean) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$"
    " BEGIN IF keep THEN PERFORM pg_catalog.set_config('exit_on_error', 'on', false); END IF;"
    " RETURN pg_catalog.pg_backend_pid(); END $$",
    f"GRANT EXECUTE ON FUNCTION exit40(boolean) TO {SERVICE}",
)
EXIT_TEARDOWN = ("DROP FUNCTION IF EXISTS exit40(boolean)",)
PROBE = "SELECT pg_backend_pid() AS pid, current_setting('exit_on_error') AS e"


async def test_exit_on_error_never_reaches_the_next_keys_errors(
    pair: LocalPair, work_dir: Path
) -> None:
    async with beside_one_server_connection(pair, work_dir, EXIT_SETUP, EXIT_TEARDOWN) as (
        _,
        client,
    ):
        for keep in ("false", "true"):
            a = await query(client, "write", f"SELECT exit40({keep})")
            assert a.status_code == 200, a.text
            pid = a.json()["rows"][0][0]
            failed = await query(client, "read", "SELECT 1 / (random() > 2)::int")
            assert 400 <= failed.status_code < 500, failed.text
            after = await query(client, "read", PROBE)
            assert after.status_code == 200, after.text
            assert after.json()["rows"] == [[pid, "off"]], (keep, after.text)


async def test_temporary_tables_under_huge_temp_buffers_spare_the_next_key_on_own_sessions(
    pair: LocalPair,
) -> None:
    async with attacked_on(pair, DROP_SETUP, DROP_TEARDOWN) as client:
        started = time.monotonic()
        a = await query(client, "write", "SELECT make40(150)", timeout_ms=1000)
        a_took = time.monotonic() - started
        assert a.status_code == 200, a.text
        assert a_took < 2.5, f"A took {a_took:.1f} s"
        started = time.monotonic()
        b = await query(client, "read", "SELECT 1", timeout_ms=1000)
        b_took = time.monotonic() - started
        assert b.status_code == 200, b.text
        assert b_took < 0.5, f"B took {b_took:.1f} s"
