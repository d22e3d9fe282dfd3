"""Thirty-ninth review pass (attacker), what held.

Behind PgBouncer (app/sql/pgbouncer.py finish: the end, the cleanup unit, the ending unit in
one pipeline write):

- client_encoding left by code: a SECURITY DEFINER function sets the session's
  client_encoding (set_config(..., false)) to LATIN1, SQL_ASCII or EUC_JP; the cleanup's
  RESET ALL puts it back (PgBouncer and psycopg follow the ParameterStatus), and the next
  key reads 'é' and UTF8 as before.
- a 1 ms session statement_timeout with the backend made to talk (client_min_messages
  debug5, debug_print_parse/rewritten, debug_pretty_print: every DEBUG or LOG message ends
  in errfinish's CHECK_FOR_INTERRUPTS, so a cancel due while the ending unit's DO block
  starts would be raised before its exception block): with the cleanup cut short (a
  temporary child of a parent another session locks, as in pass 36), the next key still
  never runs on A's backend with A's temporary child. (Measured apart, on PostgreSQL 15
  directly: the ending unit under a 1 ms session statement_timeout escaped its handler once
  in 300 tries on a warm backend, never with those messages on; see the report of pass 39.)
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import beside_one_server_connection, query
from tests.attacks.test_pass36_unclean_session_spared import a_cleanup_cut_short
from tests.attacks.test_pass37_tried import TEARDOWN as TEARDOWN37
from tests.attacks.test_pass37_tried import setup_for

ENCODING_SETUP = (
    "CREATE FUNCTION enc39(e text) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$"
    " BEGIN PERFORM pg_catalog.set_config('client_encoding', e, false);"
    " RETURN pg_catalog.pg_backend_pid(); END $$",
    f"GRANT EXECUTE ON FUNCTION enc39(text) TO {SERVICE}",
)
ENCODING_TEARDOWN = ("DROP FUNCTION IF EXISTS enc39(text)",)
PROBE = "SELECT 'é' AS s, current_setting('client_encoding') AS e, length('é') AS n"


@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII", "EUC_JP"])
async def test_a_client_encoding_left_by_code_is_reset_for_the_next_key(
    pair: LocalPair, work_dir: Path, encoding: str
) -> None:
    async with beside_one_server_connection(pair, work_dir, ENCODING_SETUP, ENCODING_TEARDOWN) as (
        _,
        client,
    ):
        before = await query(client, "read", PROBE)
        assert before.status_code == 200, before.text
        assert before.json()["rows"] == [["é", "UTF8", 1]], before.text
        for _ in range(3):
            await query(client, "write", f"SELECT enc39('{encoding}')")  # (A's own answer)
            after = await query(client, "read", PROBE)
            assert after.status_code == 200, after.text
            assert after.json()["rows"] == before.json()["rows"], after.text


TALKATIVE = [
    ("client_min_messages", "debug5"),
    ("debug_print_parse", "on"),
    ("debug_print_rewritten", "on"),
    ("debug_pretty_print", "on"),
    ("statement_timeout", "1ms"),
]


async def test_a_failed_cleanup_under_a_1ms_timeout_and_debug_messages_ends_its_session(
    pair: LocalPair, work_dir: Path
) -> None:
    setup = setup_for(TALKATIVE)
    async with beside_one_server_connection(pair, work_dir, setup, TEARDOWN37) as (_, client):
        other = await psycopg.AsyncConnection.connect(pair.primary.dsn(), autocommit=True)
        try:
            for _ in range(3):
                answer, b = await a_cleanup_cut_short(
                    pair, client, other, "leave37", "parent37", "SELECT probe37()"
                )
                assert answer.status_code == 200, answer.text
                a_pid = answer.json()["rows"][0][0]
                assert b.status_code == 200, b.text
                b_pid, user, child = b.json()["rows"][0][0].split()
                assert int(b_pid) != a_pid or (user == SERVICE and child == "false"), (
                    f"B ran on A's unclean server session (pid {b_pid}) as {user},"
                    f" A's temporary child there: {child}"
                )
        finally:
            await other.close()
