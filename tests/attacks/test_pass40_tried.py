"""Fortieth review pass (attacker), what held.

Behind PgBouncer (app/sql/pgbouncer.py finish: the end, the unit that sets exit_on_error,
the cleanup, the ending unit in one pipeline write):

- exit_on_error never reaches the next key: after code of the owner's ran (the cleanup
  runs, its unit sets exit_on_error, its RESET ALL turns it off), the next key's own error
  (a division by zero) is answered as an error and the server session lives on: the key
  after reads the same backend, with exit_on_error off. Also when the code itself set
  exit_on_error on for the session (set_config(..., false)): RESET ALL resets it to the
  login's default.
"""

from __future__ import annotations

from pathlib import Path

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import beside_one_server_connection, query

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
