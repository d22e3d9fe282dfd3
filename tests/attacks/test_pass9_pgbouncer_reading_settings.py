"""Ninth review pass (attacker): behind PgBouncer, settings that still change how another
client's statements are read or planned.

Behind PgBouncer (MIRRORPOOL_PGBOUNCER=true) a server session is shared by every client of
the pooler and never reset. Pass 8 refused the settings that change how a PL/pgSQL function's
names and literals are read (search_path, TimeZone, array_nulls, transform_null_equals,
xmloption: app/sql/transaction_pooling.py _READING_SETTINGS), because the function's plans,
made once per backend, keep that reading. The list is a deny list, and it is short:

- `timezone_abbreviations` changes what an abbreviation in a literal means: under
  'Australia', `'2024-01-01 00:00:00 EST'::timestamptz` is +10:00 (Australian Eastern), not
  -05:00. A read key's `SET LOCAL timezone_abbreviations = 'Australia'` and one call of a
  function of the schema's own leave that instant in the function's cached plan for every
  later client of that server connection: 15 hours off.
- `quote_all_identifiers`: quote_ident() is immutable, so a function's `quote_ident('orders')`
  is folded into its plan under the attacker's `SET LOCAL quote_all_identifiers = on`, and
  every later client gets `"orders"` (dynamic SQL built from it still works, but any code that
  compares or stores the name sees another text).
- a custom setting (`app.tenant`), even `SET LOCAL`: PostgreSQL keeps its placeholder defined
  in the session for good, so every later client's `current_setting('app.tenant', true)`
  says '' instead of NULL (with sessions of mirrorpool's own the connection is closed after:
  app/sql/session.py custom_settings; behind PgBouncer nothing refuses it).
- planner settings (`enable_indexscan`, `enable_bitmapscan`, ...): a function's
  parameterless query gets one generic plan per backend, kept until invalidated; planned
  under the attacker's `SET LOCAL enable_indexscan = off`, every later client's call scans
  the whole table (a performance effect, not a wrong answer).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import query, transaction
from tests.attacks.test_pgbouncer_sessions import behind, bouncer  # noqa: F401
from tests.conftest import as_owner


@pytest.fixture
def schema(pair: LocalPair) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    names = {
        "launch_at": f"mp9_launch_at_{tag}",
        "table": f"mp9_big_{tag}",
        "lookup": f"mp9_lookup_{tag}",
        "quoted": f"mp9_quoted_{tag}",
        # The schema's own view over the transaction's scan counts (keys may not read
        # pg_stat_xact_* themselves: they show other requests' pending counts).
        "scans": f"mp9_scans_{tag}",
    }
    as_owner(
        pair,
        f"CREATE FUNCTION {names['launch_at']}() RETURNS text LANGUAGE plpgsql STABLE AS $$"
        " BEGIN RETURN ('2024-01-01 00:00:00 EST'::timestamptz AT TIME ZONE 'UTC')::text;"
        " END $$",
        f"CREATE TABLE {names['table']} (id int PRIMARY KEY, v text)",
        f"INSERT INTO {names['table']} SELECT g, 'x' FROM generate_series(1, 20000) g",
        f"ANALYZE {names['table']}",
        f"CREATE FUNCTION {names['lookup']}() RETURNS text LANGUAGE plpgsql STABLE AS $$"
        f" DECLARE r text; BEGIN SELECT v INTO r FROM {names['table']} WHERE id = 4242;"
        " RETURN r; END $$",
        f"CREATE FUNCTION {names['quoted']}() RETURNS text LANGUAGE plpgsql STABLE AS $$"
        " BEGIN RETURN quote_ident('orders'); END $$",
        f"CREATE VIEW {names['scans']} AS SELECT seq_scan, idx_scan"
        f" FROM pg_stat_xact_user_tables WHERE relname = '{names['table']}'",
    )
    yield names
    as_owner(
        pair,
        f"DROP VIEW {names['scans']}",
        f"DROP FUNCTION {names['launch_at']}(), {names['lookup']}(), {names['quoted']}()",
        f"DROP TABLE {names['table']}",
    )


async def test_a_read_keys_abbreviations_do_not_read_another_clients_function_literals(
    behind: httpx.AsyncClient,  # noqa: F811
    schema: dict[str, str],
) -> None:
    attack = await transaction(
        behind,
        "read",
        "SET LOCAL timezone_abbreviations = 'Australia'",
        f"SELECT {schema['launch_at']}()",
    )
    assert attack.status_code in (200, 400), attack.text  # (a refusal is a fix)
    victim = await query(behind, "admin", f"SELECT {schema['launch_at']}() AS t")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["2024-01-01 05:00:00"]], (
        f"the function's literal was read in another client's abbreviations: {victim.text}"
    )


async def test_a_read_keys_local_custom_setting_is_not_defined_for_other_clients(
    behind: httpx.AsyncClient,  # noqa: F811
) -> None:
    name = f"mp9.t{uuid.uuid4().hex[:8]}"
    before = await query(behind, "admin", f"SELECT current_setting('{name}', true) IS NULL")
    assert before.status_code == 200, before.text
    assert before.json()["rows"] == [[True]], before.text
    attack = await transaction(behind, "read", f"SET LOCAL {name} = 'attacker'", "SELECT 1")
    assert attack.status_code in (200, 400), attack.text
    victim = await query(behind, "admin", f"SELECT current_setting('{name}', true) IS NULL")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [[True]], (
        f"another client's SET LOCAL left the setting defined on the server session: {victim.text}"
    )


async def test_a_read_keys_planner_settings_do_not_plan_another_clients_function_queries(
    behind: httpx.AsyncClient,  # noqa: F811
    schema: dict[str, str],
) -> None:
    attack = await transaction(
        behind,
        "read",
        "SET LOCAL enable_indexscan = off",
        "SET LOCAL enable_bitmapscan = off",
        "SET LOCAL enable_indexonlyscan = off",
        f"SELECT {schema['lookup']}()",
    )
    assert attack.status_code in (200, 400), attack.text
    # The victim's own transaction counts the scans it made of the table.
    victim = await transaction(
        behind,
        "admin",
        f"SELECT {schema['lookup']}()",
        f"SELECT seq_scan, idx_scan FROM {schema['scans']}",
    )
    assert victim.status_code == 200, victim.text
    scans = victim.json()["results"][1]["rows"]
    assert [[int(n) for n in row] for row in scans] == [[0, 1]], (
        f"another client's planner settings planned this client's query (seq, idx): {scans}"
    )


async def test_the_function_query_is_an_index_scan_without_the_attack(
    behind: httpx.AsyncClient,  # noqa: F811
    schema: dict[str, str],
) -> None:
    """The control for the test above: the victim's call alone scans the index once."""
    victim = await transaction(
        behind,
        "admin",
        f"SELECT {schema['lookup']}()",
        f"SELECT seq_scan, idx_scan FROM {schema['scans']}",
    )
    assert victim.status_code == 200, victim.text
    scans = victim.json()["results"][1]["rows"]
    assert [[int(n) for n in row] for row in scans] == [[0, 1]], scans


async def test_a_read_keys_quoting_does_not_fold_into_another_clients_function_plans(
    behind: httpx.AsyncClient,  # noqa: F811
    schema: dict[str, str],
) -> None:
    attack = await transaction(
        behind, "read", "SET LOCAL quote_all_identifiers = on", f"SELECT {schema['quoted']}()"
    )
    assert attack.status_code in (200, 400), attack.text
    victim = await query(behind, "admin", f"SELECT {schema['quoted']}() AS q")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["orders"]], (
        f"another client's quote_all_identifiers was folded into the function's plan: {victim.text}"
    )
