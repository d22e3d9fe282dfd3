"""Thirty-seventh review pass (attacker), what held: behind PgBouncer, a cleanup cut short
(unit 2 failing by lock timeout: a temporary child of a permanent parent another session
LOCKs, as in pass 36) still ends its server session although the code left session
settings meant to break or cut short unit 3's DO block before its pg_terminate_backend:

    statement-timeout  statement_timeout = 1ms (a cancel racing the DO block's start)
    plpgsql            plpgsql.extra_errors/extra_warnings = all, check_asserts off,
                       print_strict_params (plpgsql.variable_conflict: superuser only)
    read-only          default_transaction_read_only, serializable isolation
    literals           standard_conforming_strings off, escape_string_warning,
                       check_function_bodies off, default_text_search_config, search_path
                       pg_temp first
    signal-role        SET ROLE pg_signal_backend (the one role the service's login is a
                       member of: it may still signal the backend)

Each: B (the next request, on the only server connection) never runs on A's backend with
A's temporary child or settings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import beside_one_server_connection
from tests.attacks.test_pass36_unclean_session_spared import a_cleanup_cut_short

CASES = {
    "statement-timeout": [("statement_timeout", "1ms")],
    "plpgsql": [
        ("plpgsql.extra_errors", "all"),
        ("plpgsql.extra_warnings", "all"),
        ("plpgsql.check_asserts", "off"),
        ("plpgsql.print_strict_params", "on"),
    ],
    "read-only": [
        ("default_transaction_read_only", "on"),
        ("default_transaction_isolation", "serializable"),
    ],
    "literals": [
        ("standard_conforming_strings", "off"),
        ("escape_string_warning", "on"),
        ("check_function_bodies", "off"),
        ("default_text_search_config", "pg_catalog.simple"),
        ("search_path", "pg_temp, public, pg_catalog"),
    ],
    "signal-role": [("role", "pg_signal_backend")],
}
TEARDOWN = (
    "DROP FUNCTION IF EXISTS leave37()",
    "DROP FUNCTION IF EXISTS probe37()",
    "DROP FUNCTION IF EXISTS make37()",
    "DROP TABLE IF EXISTS parent37 CASCADE",
)
ROUNDS = 3


def setup_for(settings: list[tuple[str, str]]) -> tuple[str, ...]:
    sets = " ".join(
        f"PERFORM pg_catalog.set_config('{name}', '{value}', false);" for name, value in settings
    )
    return (
        "CREATE TABLE parent37 (x int)",
        f"GRANT SELECT ON parent37 TO {SERVICE}",
        "CREATE FUNCTION make37() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$"
        " BEGIN CREATE TEMP TABLE c37 () INHERITS (public.parent37); END $$",
        # (SECURITY INVOKER: a definer may not SET ROLE)
        "CREATE FUNCTION leave37() RETURNS int LANGUAGE plpgsql AS $$"
        f" BEGIN PERFORM public.make37(); {sets}"
        " PERFORM pg_catalog.pg_sleep(0.5); RETURN pg_catalog.pg_backend_pid(); END $$",
        "CREATE FUNCTION probe37() RETURNS text LANGUAGE sql AS $$SELECT"
        " pg_catalog.pg_backend_pid()::text || ' ' || current_user::text || ' '"
        " || (pg_catalog.to_regclass('pg_temp.c37') IS NOT NULL)::text$$",
    )


@pytest.mark.parametrize("case", list(CASES))
async def test_a_failed_cleanup_with_settings_left_still_ends_its_session(
    pair: LocalPair, work_dir: Path, case: str
) -> None:
    setup = setup_for(CASES[case])
    await cut_short_cleanups_end_the_session(pair, work_dir, setup, TEARDOWN, ROUNDS)


async def cut_short_cleanups_end_the_session(
    pair: LocalPair, work_dir: Path, setup: Sequence[str], teardown: Sequence[str], rounds: int
) -> None:
    """A's cleanup cut short by another session's lock (`leave37`, rounds of
    a_cleanup_cut_short): B, on the one server connection, runs on a fresh session, or on
    A's only as the login with no temporary child left."""
    async with beside_one_server_connection(pair, work_dir, setup, teardown) as (_, client):
        other = await psycopg.AsyncConnection.connect(pair.primary.dsn(), autocommit=True)
        try:
            for _ in range(rounds):
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
