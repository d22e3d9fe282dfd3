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

On sessions of mirrorpool's own (app/sql/session.py restore):

- a key's own SET of a 1 ms statement_timeout, lock_timeout, idle_session_timeout or
  idle_in_transaction_session_timeout (accepted, 200): the reset runs under it and either
  resets the session or closes it; the next key reads the settings as before, and its
  statement runs whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import beside_one_server_connection, query
from tests.attacks.test_pass37_tried import TEARDOWN as TEARDOWN37
from tests.attacks.test_pass37_tried import cut_short_cleanups_end_the_session, setup_for

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
    await cut_short_cleanups_end_the_session(pair, work_dir, setup, TEARDOWN37, 3)


@pytest.mark.parametrize(
    "setting",
    [
        "SET statement_timeout = '1ms'",
        "SET idle_session_timeout = '1ms'",
        "SET idle_in_transaction_session_timeout = '1ms'",
        "SET lock_timeout = '1ms'",
    ],
)
async def test_a_1ms_timeout_a_key_sets_on_our_own_session_is_not_the_next_keys(
    client: Any, setting: str
) -> None:
    # On a session of mirrorpool's own (one pooled connection for every key), the reset
    # (app/sql/session.py restore: RESET ALL, then DISCARD ALL) runs under the key's own
    # 1 ms timeout: it is reset, or the connection goes; the next key's statement runs
    # under the defaults, whole.
    probe = (
        "SELECT current_setting('statement_timeout') AS s, current_setting('lock_timeout') AS l,"
        " current_setting('idle_session_timeout') AS i, pg_sleep(0.01)::text AS z"
    )
    before = await query(client, "read", probe)
    assert before.status_code == 200, before.text
    for _ in range(3):
        a = await query(client, "write", setting)
        assert a.status_code == 200, a.text  # (accepted: a SET of its own session)
        b = await query(client, "read", probe)
        assert b.status_code == 200, b.text
        assert b.json()["rows"] == before.json()["rows"], b.text
