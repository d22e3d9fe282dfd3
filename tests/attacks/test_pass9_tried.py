"""Ninth review pass (attacker): attacks that were tried and failed, kept so they keep failing.

1. Other spellings of what pass 8 closes or refuses: the decisions read PostgreSQL's parse
   tree, so `U&` identifiers and strings, quoted and upper-case names, `SET ... FROM CURRENT`,
   `SET SCHEMA`, named arguments, EXPLAIN around set_config() and several statements in one
   text all come out as the plain spelling does (or are refused).
2. With sessions of mirrorpool's own, the settings that pass 9 found leaking through a
   function's cached plans behind PgBouncer (test_pass9_pgbouncer_reading_settings.py) do not
   reach another key: any setting, SET LOCAL included, costs a DISCARD ALL, whose DISCARD
   PLANS replans the PL/pgSQL function's queries and expressions under the next caller's
   session, even when the call is hidden in a view.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from app.errors import InvalidSQL
from app.sql import refusals, session, transaction_pooling
from app.sql.session import Effect
from app.sql.tree import parse
from tests.attacks.conftest import query, transaction
from tests.conftest import as_owner

# -- 1. spellings --------------------------------------------------------------------------

CLOSES = [
    'SET LOCAL U&"search\\005fpath" = public',
    'SET LOCAL "SEARCH_PATH" = public',
    "SET LOCAL search_path FROM CURRENT",
    "SET search_path TO DEFAULT",
    "RESET search_path",
    "SET SCHEMA 'public'",
    "SELECT set_config(U&'search\\005fpath', 'public', true)",
    "SELECT set_config(E'search\\x5fpath', 'public', true)",
    "SELECT pg_catalog.set_config('Search_Path'::text, 'public', true)",
    "EXPLAIN (ANALYZE) SELECT set_config('search_path', 'public', true)",
    "WITH s AS (SELECT set_config('search_path', 'public', true)) SELECT * FROM s",
    "SELECT set_config('app.tenant', 'x', true)",
    'SET LOCAL U&"app\\002etenant" = x',
    "SELECT setseed(0.5)",
]


@pytest.mark.parametrize("sql", CLOSES)
def test_every_spelling_of_what_pass_8_closes_closes(sql: str) -> None:
    assert session.effect(parse(sql)) is Effect.CLOSE, sql


REFUSED = [
    'SET LOCAL U&"se\\0065d" = 0.5',
    "SELECT set_config(U&'se\\0065d', '0.5', true)",
    "SELECT set_config(setting_name => 'search_path', new_value => 'x', is_local => true)",
    "SELECT set_config('search' || '_path', 'x', true)",
    "SELECT set_config('search_path' COLLATE \"C\", 'x', true)",
    'ALTER DATABASE U&"postgr\\0065s" CONNECTION LIMIT 0',
    'ALTER DATABASE "postgres" RENAME TO other',
    "ALTER DATABASE postgres OWNER TO CURRENT_USER",
    "ALTER DATABASE postgres RESET ALL",
    "ALTER DATABASE postgres SET search_path FROM CURRENT",
    "CREATE SCHEMA AUTHORIZATION CURRENT_USER",
    'ALTER SCHEMA U&"publi\\0063" RENAME TO mirrorpool',
    "ALTER SCHEMA public OWNER TO SESSION_USER",
    "DROP OWNED BY CURRENT_USER",
    "REASSIGN OWNED BY CURRENT_USER TO SESSION_USER",
    "ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM PUBLIC",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_every_spelling_of_what_pass_8_refuses_is_refused(sql: str) -> None:
    assert refusals.refusal(parse(sql), False) is not None, sql


BEHIND_PGBOUNCER = [
    "SELECT set_config(U&'time\\007aone', 'UTC', true)",
    "SET LOCAL TIME ZONE 'UTC'",
    'SET LOCAL "TimeZone" FROM CURRENT',
    "SET LOCAL XML OPTION DOCUMENT",
    "SELECT set_config('Array_Nulls', 'off', true)",
    "CREATE TEMP TABLE t (i int) ON COMMIT DROP",
    "SELECT 1 INTO TEMP t",
    "CREATE TABLE pg_temp.t (i int)",
]


@pytest.mark.parametrize("sql", BEHIND_PGBOUNCER)
def test_every_spelling_of_what_pass_8_refuses_behind_pgbouncer_is_refused(sql: str) -> None:
    assert transaction_pooling.refusal(parse(sql)) is not None, sql


def test_several_statements_in_one_text_are_refused() -> None:
    with pytest.raises(InvalidSQL):
        parse("SELECT 1; SET search_path = pg_temp")


# -- 2. plan-cache settings with sessions of mirrorpool's own -------------------------------


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}  # reads too are served by the primary's one connection


@pytest.fixture
def schema(pair: LocalPair) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    n = {
        "launch_at": f"mp9o_launch_at_{tag}",
        "quoted": f"mp9o_quoted_{tag}",
        "table": f"mp9o_big_{tag}",
        "lookup": f"mp9o_lookup_{tag}",
        "view": f"mp9o_view_{tag}",
        "scans": f"mp9o_scans_{tag}",  # the schema's own view: keys may not read pg_stat_xact_*
    }
    as_owner(
        pair,
        f"CREATE FUNCTION {n['launch_at']}() RETURNS text LANGUAGE plpgsql STABLE AS $$"
        " BEGIN RETURN ('2024-01-01 00:00:00 EST'::timestamptz AT TIME ZONE 'UTC')::text;"
        " END $$",
        f"CREATE FUNCTION {n['quoted']}() RETURNS text LANGUAGE plpgsql STABLE AS $$"
        " BEGIN RETURN quote_ident('orders'); END $$",
        f"CREATE TABLE {n['table']} (id int PRIMARY KEY, v text)",
        f"INSERT INTO {n['table']} SELECT g, 'x' FROM generate_series(1, 20000) g",
        f"ANALYZE {n['table']}",
        f"CREATE FUNCTION {n['lookup']}() RETURNS text LANGUAGE plpgsql STABLE AS $$"
        f" DECLARE r text; BEGIN SELECT v INTO r FROM {n['table']} WHERE id = 4242;"
        " RETURN r; END $$",
        # the calls out of the request's tree
        f"CREATE VIEW {n['view']} AS SELECT {n['launch_at']}() AS t, {n['quoted']}() AS q,"
        f" {n['lookup']}() AS v",
        f"CREATE VIEW {n['scans']} AS SELECT idx_scan FROM pg_stat_xact_user_tables"
        f" WHERE relname = '{n['table']}'",
    )
    yield n
    as_owner(
        pair,
        f"DROP VIEW {n['view']}, {n['scans']}",
        f"DROP FUNCTION {n['launch_at']}(), {n['quoted']}(), {n['lookup']}()",
        f"DROP TABLE {n['table']}",
    )


async def test_no_setting_reaches_another_keys_function_plans_through_a_view(
    client: httpx.AsyncClient, schema: dict[str, str]
) -> None:
    attack = await transaction(
        client,
        "read",
        "SET LOCAL timezone_abbreviations = 'Australia'",
        "SET LOCAL quote_all_identifiers = on",
        "SET LOCAL enable_indexscan = off",
        "SET LOCAL enable_bitmapscan = off",
        "SET LOCAL enable_indexonlyscan = off",
        "SET LOCAL plan_cache_mode = force_generic_plan",
        f"SELECT * FROM {schema['view']}",
    )
    assert attack.status_code == 200, attack.text
    victim = await transaction(
        client,
        "admin",
        f"SELECT {schema['launch_at']}(), {schema['quoted']}(), {schema['lookup']}()",
        f"SELECT idx_scan FROM {schema['scans']}",
    )
    assert victim.status_code == 200, victim.text
    first, scans = victim.json()["results"]
    assert first["rows"] == [["2024-01-01 05:00:00", "orders", "x"]], victim.text
    assert int(scans["rows"][0][0]) >= 1, f"the lookup was planned without its index: {scans}"


async def test_a_write_keys_session_setting_reaches_no_function_plan_either(
    client: httpx.AsyncClient, schema: dict[str, str]
) -> None:
    for sql in (
        "SET timezone_abbreviations = 'Australia'",
        "SET quote_all_identifiers = on",
    ):
        setting = await query(client, "write", sql)
        assert setting.status_code == 200, setting.text
        # (the plain path: autocommit on the same connection, reset after)
        called = await query(client, "write", f"SELECT * FROM {schema['view']}")
        assert called.status_code == 200, called.text
    victim = await query(client, "admin", f"SELECT {schema['launch_at']}(), {schema['quoted']}()")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["2024-01-01 05:00:00", "orders"]], victim.text
