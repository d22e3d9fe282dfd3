"""Eighth review pass (attacker): the `"$user"` schema, made later.

The start-up check (app/cluster/logins.py) warns about a login that may CREATE in a schema on
its search_path, reading `current_schemas(false)`: the schemas that exist *now*. The default
search_path is `"$user", public`, and a schema named like the login does not exist at
start-up, so it is not in that list. A login with CREATE on the database (its owner, the
common `CREATE DATABASE app OWNER app`, or a `GRANT CREATE ON DATABASE`) passes the check
without a word, and a write key then runs `CREATE SCHEMA AUTHORIZATION CURRENT_USER` (not
refused: the tree refuses CREATE FUNCTION, not schemas, tables or views) and
`CREATE VIEW mirrorpool.pub AS ...`: committed, it comes first on the search path of every
session of the login, so every key sharing the login reads the attacker's `pub` instead of the
schema's, for good (no reset can help: it is in the database). Behind PgBouncer too.

This needs a privilege the README's recipe does not give (CREATE on the database); the hole is
that nothing tells the operator who gave it.

The same login when it owns the database (the usual way to give it CREATE there) may also
`ALTER DATABASE app CONNECTION LIMIT 0`: only `ALTER DATABASE ... SET` is refused
(app/sql/refusals.py _SHARED), and from then on every new connection of every login but a
superuser's is refused ("too many connections for database"): the pools cannot replace a
single connection, other keys' role pools cannot open theirs, for good."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import keys_for, query, transaction
from tests.conftest import serving_ready, settings_for


@pytest.fixture
def database_creator(pair: LocalPair) -> Iterator[None]:
    """The service's login may CREATE in the database (as its owner could)."""
    with pair.primary.connect() as conn:
        conn.execute(f"GRANT CREATE ON DATABASE postgres TO {SERVICE}")
    yield
    with pair.primary.connect() as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SERVICE} CASCADE")
        conn.execute(f"REVOKE CREATE ON DATABASE postgres FROM {SERVICE}")


async def test_a_login_that_may_create_its_own_schema_is_warned_about(
    pair: LocalPair,
    world: dict[str, str],
    database_creator: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(pair, auth="keys", api_keys=keys_for(world["role"])[:3])
    with caplog.at_level(logging.WARNING):
        async with serving_ready(settings):
            pass
    warned = [r.getMessage() for r in caplog.records if "may create" in r.getMessage()]
    assert warned, (
        'a login that may create the "$user" schema, first on its search_path, starts '
        "without a warning"
    )


async def test_a_write_key_does_not_put_its_own_schema_first_for_the_others(
    client: httpx.AsyncClient, database_creator: None
) -> None:
    attack = await transaction(
        client,
        "write",
        "CREATE SCHEMA AUTHORIZATION CURRENT_USER",
        f"CREATE VIEW {SERVICE}.pub AS SELECT 1 AS id, 'spoofed-by-writer'::text AS v",
    )
    assert attack.status_code in (200, 400, 403), attack.text  # (a refusal is a fix)
    victim = await query(client, "admin", "SELECT v FROM pub WHERE id = 1")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["public"]], f"another key's schema answers: {victim.text}"


@pytest.fixture
def owned_database(pair: LocalPair) -> Iterator[str]:
    """A database the service's login owns."""
    name = f"mp8_owned_{uuid.uuid4().hex[:8]}"
    with pair.primary.connect() as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {SERVICE}")
    yield name
    with pair.primary.connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def owner_client(
    pair: LocalPair, world: dict[str, str], owned_database: str
) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(
        pair,
        dbname=owned_database,
        mirror_dsn=None,
        auth="keys",
        api_keys=keys_for(world["role"])[:3],
        pool_min_size=1,
        pool_max_size=1,
    )
    async with serving_ready(settings) as (_, client):
        yield client


async def test_a_write_key_does_not_close_the_database_to_new_connections(
    owner_client: httpx.AsyncClient, owned_database: str
) -> None:
    attack = await query(
        owner_client, "write", f"ALTER DATABASE {owned_database} CONNECTION LIMIT 0"
    )
    assert attack.status_code in (200, 400, 403), attack.text  # (a refusal is a fix)
    # A custom setting has mirrorpool close the connection: the pool must open a new one.
    await query(owner_client, "write", "SELECT set_config('mp8.fresh', 'x', true)")
    victim = await query(owner_client, "admin", "SELECT 1 AS one")
    assert victim.status_code == 200, f"another key's request found no connection: {victim.text}"
