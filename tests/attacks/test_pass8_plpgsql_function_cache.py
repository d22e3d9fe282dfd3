"""Eighth review pass (attacker): what PostgreSQL keeps of the schema's PL/pgSQL functions in
a session.

A PL/pgSQL function is compiled once per backend, on its first call, and kept for the life of
the backend: DISCARD ALL does not touch that cache (only a change of the function's pg_proc
row recompiles it). What the compiler resolves then by name is resolved with the caller's
session as it is at that moment:

- `DECLARE a prices.amount%TYPE` takes the column type of whichever `prices` the name finds:
  a temporary table (pg_temp is searched first for relations, even when the search_path does
  not name it; behind PgBouncer an ON COMMIT DROP one is allowed), or a table of the same
  name in another schema the request puts first with `SET LOCAL search_path` (allowed to read
  keys; behind PgBouncer too, as it does not name pg_temp). The type sticks after the table is
  gone and the session reset: every later key's call of the function on that connection
  assigns `numeric(10,2)` values to an `int` (9.99 comes back as 10), or to a `varchar(3)`
  (the call fails).
- the function's queries are planned (and their literals read) once, under the caller's
  settings: `'2024-01-01 00:00:00'::timestamptz` in the body is read in the request's own
  `SET LOCAL TimeZone`, and kept: SET LOCAL TimeZone = UTC does not replan it. With sessions of
  mirrorpool's own, the DISCARD ALL (DISCARD PLANS) that a call of a function of the database's
  own costs undoes that, but not when the call is out of the tree's sight: a view (or a
  trigger, a column default, a policy) of the schema calls the function, the request is only
  `SET LOCAL` and a query, judged clean, and nothing is reset. Behind PgBouncer nothing is
  reset anyway. Every later key on that connection gets the attacker's instant.

A read key's READ ONLY transaction, rolled back, is enough for all of them. Nothing here is in
the request's parse tree: the function is the schema's own (a migration made it), and the
request only calls it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.devdb import OWNER, SERVICE, LocalPair
from tests.attacks.conftest import query, transaction
from tests.attacks.test_pgbouncer_sessions import behind, bouncer  # noqa: F401
from tests.conftest import as_owner


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}  # reads too are served by the primary's one connection


@pytest.fixture
def schema(pair: LocalPair) -> Iterator[dict[str, str]]:
    """What migrations made: a table, PL/pgSQL functions over it, and an archive schema with a
    table of the same name (its amounts whole numbers) that the service may look into."""
    tag = uuid.uuid4().hex[:8]
    names = {
        "table": f"mp8_prices_{tag}",
        "archive": f"mp8_archive_{tag}",
        "price_of": f"mp8_price_of_{tag}",
        "launch_at": f"mp8_launch_at_{tag}",
        "launches": f"mp8_launches_{tag}",
    }
    with pair.primary.connect() as conn:  # schemas are the database's: the superuser makes them
        conn.execute(f"CREATE SCHEMA {names['archive']} AUTHORIZATION {OWNER}")
        conn.execute(f"GRANT USAGE ON SCHEMA {names['archive']} TO {SERVICE}")
    as_owner(
        pair,
        f"CREATE TABLE {names['table']} (id int PRIMARY KEY, amount numeric(10,2), label text)",
        f"INSERT INTO {names['table']} VALUES (1, 9.99, 'public')",
        f"CREATE TABLE {names['archive']}.{names['table']} (id int, amount int, label text)",
        f"CREATE FUNCTION {names['price_of']}(i int) RETURNS text LANGUAGE plpgsql STABLE AS $$"
        f" DECLARE a {names['table']}.amount%TYPE; l {names['table']}.label%TYPE;"
        f" BEGIN SELECT amount, label INTO a, l FROM {names['table']} WHERE id = i;"
        " RETURN a::text || ' ' || l; END $$",
        f"CREATE FUNCTION {names['launch_at']}() RETURNS text LANGUAGE plpgsql STABLE AS $$"
        " BEGIN RETURN ('2024-01-01 00:00:00'::timestamptz AT TIME ZONE 'UTC')::text; END $$",
        f"CREATE VIEW {names['launches']} AS SELECT {names['launch_at']}() AS t",
    )
    yield names
    with pair.primary.connect() as conn:
        conn.execute(f"DROP SCHEMA {names['archive']} CASCADE")
        conn.execute(f"DROP VIEW {names['launches']}")
        conn.execute(f"DROP FUNCTION {names['price_of']}(int), {names['launch_at']}()")
        conn.execute(f"DROP TABLE {names['table']}")


def shadowing_table(names: dict[str, str], on_commit_drop: bool) -> str:
    drop = " ON COMMIT DROP" if on_commit_drop else ""
    return f"CREATE TEMP TABLE {names['table']} (id int, amount int, label text){drop}"


def archive_first(names: dict[str, str]) -> str:
    return f"SET LOCAL search_path = {names['archive']}, public"


async def assert_price_unchanged(client: httpx.AsyncClient, names: dict[str, str]) -> None:
    victim = await query(client, "admin", f"SELECT {names['price_of']}(1) AS p")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["9.99 public"]], (
        f"another key's compile of the function answers for this key: {victim.text}"
    )


# -- with sessions of mirrorpool's own (reset with DISCARD ALL) -------------------------------


async def test_a_temporary_table_does_not_type_another_keys_function_variables(
    client: httpx.AsyncClient, schema: dict[str, str]
) -> None:
    # The victim's backend compiled the function already; a custom setting has mirrorpool
    # close the connection (app/sql/session.py custom_settings), and the attacker's next
    # request is the first to call the function on the new backend.
    await assert_price_unchanged(client, schema)
    fresh = await query(client, "write", "SELECT set_config('mp8.fresh', 'x', true)")
    assert fresh.status_code == 200, fresh.text
    attack = await transaction(
        client, "write", shadowing_table(schema, False), f"SELECT {schema['price_of']}(1)"
    )
    assert attack.status_code in (200, 400), attack.text  # (a refusal is a fix)
    await assert_price_unchanged(client, schema)


async def test_a_read_keys_search_path_does_not_type_another_keys_function_variables(
    client: httpx.AsyncClient, schema: dict[str, str]
) -> None:
    # (The function then fails for the read key: it may not read the archive. It compiled.)
    attack = await transaction(
        client, "read", archive_first(schema), f"SELECT {schema['price_of']}(1)"
    )
    assert attack.status_code in (200, 400, 403), attack.text
    await assert_price_unchanged(client, schema)


async def test_a_read_keys_time_zone_does_not_read_another_keys_function_literals(
    client: httpx.AsyncClient, schema: dict[str, str]
) -> None:
    # Reached through a view of the schema's own, the call is not in the request's tree: the
    # request is judged clean (SET LOCAL, a query) and nothing is reset after it, not even
    # the DISCARD PLANS that a function call would have cost.
    attack = await transaction(
        client,
        "read",
        "SET LOCAL TimeZone = 'Pacific/Kiritimati'",
        f"SELECT t FROM {schema['launches']}",
    )
    assert attack.status_code in (200, 400), attack.text
    victim = await query(client, "admin", f"SELECT {schema['launch_at']}() AS t")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["2024-01-01 00:00:00"]], (
        f"the function's literal was read in another key's time zone: {victim.text}"
    )


# -- behind PgBouncer (nothing is reset) -------------------------------------------------------


async def test_an_on_commit_drop_table_does_not_type_another_clients_function_variables(
    behind: httpx.AsyncClient,  # noqa: F811
    schema: dict[str, str],
) -> None:
    attack = await transaction(
        behind, "write", shadowing_table(schema, True), f"SELECT {schema['price_of']}(1)"
    )
    assert attack.status_code in (200, 400), attack.text
    await assert_price_unchanged(behind, schema)


async def test_a_read_keys_search_path_does_not_type_another_clients_function_variables(
    behind: httpx.AsyncClient,  # noqa: F811
    schema: dict[str, str],
) -> None:
    attack = await transaction(
        behind, "read", archive_first(schema), f"SELECT {schema['price_of']}(1)"
    )
    assert attack.status_code in (200, 400, 403), attack.text
    await assert_price_unchanged(behind, schema)


async def test_a_read_keys_time_zone_does_not_read_another_clients_function_literals(
    behind: httpx.AsyncClient,  # noqa: F811
    schema: dict[str, str],
) -> None:
    attack = await transaction(
        behind,
        "read",
        "SET LOCAL TimeZone = 'Pacific/Kiritimati'",
        f"SELECT {schema['launch_at']}()",
    )
    assert attack.status_code in (200, 400), attack.text
    victim = await query(behind, "admin", f"SELECT {schema['launch_at']}() AS t")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["2024-01-01 00:00:00"]], (
        f"the function's literal was read in another client's time zone: {victim.text}"
    )
