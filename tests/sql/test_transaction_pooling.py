"""Which statements pgbouncer mode refuses: those that change the shared server session, in
any spelling the parser reads as the same statement."""

from __future__ import annotations

import pytest

from app.sql.transaction_pooling import refusal as refusal_of
from app.sql.tree import parse


def refusal(sql: str) -> str | None:
    return refusal_of(parse(sql))


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("SET search_path = app", "SET without LOCAL"),
        ("set session statement_timeout = 0", "SET without LOCAL"),
        ("SET ROLE reporting", "SET without LOCAL"),
        ('SET "search_path" = app', "SET without LOCAL"),
        ('SET U&"search\\005fpath" = app', "SET without LOCAL"),
        ("/* SET LOCAL */ SET -- LOCAL\n search_path = app", "SET without LOCAL"),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "SET SESSION CHARACTERISTICS"),
        ("SET SESSION AUTHORIZATION bob", "SET without LOCAL"),
        ("RESET ALL", "RESET"),
        ("ALTER SEQUENCE scratch_id_seq OWNED BY NONE", "ALTER SEQUENCE ... OWNED BY"),
        ("CREATE TEMP TABLE scratch (id int) ON COMMIT DROP", "a temporary object"),
        ("create temporary table s2 on commit drop as select 1", "a temporary object"),
        ("SET LOCAL search_path = app, public", "setting search_path"),
        ("SELECT set_config('search_path', 'app', true)", "setting search_path"),
        ("SET LOCAL TIME ZONE 'Pacific/Kiritimati'", "setting timezone"),
        ("SELECT set_config('app.user', 'ada', true)", "setting app.user"),
        ('SET LOCAL "plpgsql.variable_conflict" = use_column', "setting plpgsql.variable_conflict"),
        ("SET LOCAL timezone_abbreviations = 'Australia'", "setting timezone_abbreviations"),
        ("SET LOCAL quote_all_identifiers = on", "setting quote_all_identifiers"),
        ("set local enable_indexscan to off", "setting enable_indexscan"),
        ("SET LOCAL work_mem = '1GB'", "setting work_mem"),
        ('SET LOCAL "TimeZone" = UTC', "setting timezone"),
        ("SELECT pg_catalog.set_config('array_nulls', 'off', true)", "setting array_nulls"),
        ('alter sequence "scratch_id_seq" owned by public.t.id', "ALTER SEQUENCE ... OWNED BY"),
        (
            "ALTER /* x */ SEQUENCE IF EXISTS public.s RESTART OWNED BY NONE",
            "ALTER SEQUENCE ... OWNED BY",
        ),
        ("DISCARD ALL", "DISCARD"),
        ("PREPARE p AS SELECT 1", "PREPARE"),
        ("LISTEN jobs", "LISTEN"),
        ("SELECT set_config('app.user', 'ada', false)", "set_config(..., false)"),
        ("SELECT pg_catalog.set_config('app.user', $1, $2)", "set_config(..., false)"),
        ("SELECT pg_advisory_lock(42)", "pg_advisory_lock()"),
        ('SELECT "pg_catalog"."pg_advisory_lock"(42)', "pg_advisory_lock()"),
        ('SELECT U&"pg_advisory\\005flock"(42)', "pg_advisory_lock()"),
        ("SELECT U&\"set\\005fconfig\"('a.b', 'c', false)", "set_config(..., false)"),
        ("SELECT pg_try_advisory_lock_shared(1, 2)", "pg_try_advisory_lock_shared()"),
        ("SELECT pg_advisory_unlock_all()", "pg_advisory_unlock_all()"),
        ("CREATE TEMP TABLE scratch (id int)", "a temporary object"),
        ("create global temporary table scratch (id int)", "a temporary object"),
        ("CREATE TABLE IF NOT EXISTS pg_temp.scratch (id int)", "a temporary object"),
        ("SELECT 1 AS id INTO TEMP scratch", "a temporary object"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "DECLARE ... WITH HOLD"),
        ("BEGIN", "a transaction control statement"),
        ("START TRANSACTION", "a transaction control statement"),
        ("COMMIT", "a transaction control statement"),
        ("ROLLBACK", "a transaction control statement"),
        ("END", "a transaction control statement"),
    ],
)
def test_session_changes_are_refused_with_the_alternative(sql: str, what: str) -> None:
    why = refusal(sql)
    assert why is not None
    assert why.startswith(f"MIRRORPOOL_PGBOUNCER=true refuses {what}")
    assert "; " in why  # says what to do instead


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "SET LOCAL statement_timeout = 100",
        "SELECT set_config('lock_timeout', '1s', true)",
        "SET LOCAL synchronous_commit = off",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET CONSTRAINTS ALL DEFERRED",
        "SELECT set_config(concat('app.', 'user'), 'ada', 'on')",
        "SELECT pg_advisory_xact_lock(42)",
        "ALTER SEQUENCE s RESTART WITH 10",
        "DECLARE c CURSOR FOR SELECT 1",
        "SAVEPOINT a",
        "ROLLBACK TO SAVEPOINT a",
        "NOTIFY jobs, 'x'",
        # Words inside literals, quoted identifiers and comments, and ordinary names.
        "SELECT 'SET x = 1; pg_advisory_lock(1)' AS s -- set_config(a, b, false)",
        'SELECT "temp", hold, temporary FROM weather',
        "INSERT INTO temp (hold) VALUES (1)",
        "ALTER TABLE t SET (fillfactor = 50)",
        "ALTER ROLE app SET work_mem = '64MB'",
        "UPDATE settings SET value = 'x' WHERE name = 'reset'",
    ],
)
def test_transaction_scoped_statements_pass(sql: str) -> None:
    assert refusal(sql) is None
