"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Third review pass. Temporary functions are refused by the parse tree only when the
statement itself names pg_temp (app/sql/refusals.py: `tree.temp and CreateFunctionStmt`).
With pg_temp first on the transaction's search_path (SET LOCAL search_path, or
set_config('search_path', ..., true): both judged local and clean), an unqualified
CREATE FUNCTION creates the function in pg_temp all the same, and `SELECT pg_temp.f()` is
not refused (it only costs a reset). The first pass's attacks come back through it: the
function runs ALTER ROLE on the service's login (its password, its defaults) or ends the
other keys' backends, with the login's rights."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import query, transaction

# Two ways to put pg_temp first for the rest of the request's transaction.
PG_TEMP_FIRST = [
    "SET LOCAL search_path = pg_temp",
    "SELECT set_config('search_path', 'pg_temp', true)",
]


def made_in_pg_temp(body: str) -> tuple[str, str]:
    """CREATE FUNCTION with no schema (it lands in pg_temp), and its call."""
    return (
        f"CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $f$ BEGIN {body}; RETURN 1; END $f$",
        "SELECT pg_temp.f()",
    )


@pytest.fixture
def overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    # The victim's request and the attacker's side by side where the test needs it.
    return {"mirror_dsn": None, "pool_max_size": 2 if "another" in request.node.name else 1}


@pytest.mark.parametrize("first", PG_TEMP_FIRST, ids=["set-local", "set-config"])
async def test_a_write_key_cannot_set_the_service_logins_password(
    client: httpx.AsyncClient, pair: LocalPair, restore_login: None, first: str
) -> None:
    attack = await transaction(
        client,
        "write",
        first,
        *made_in_pg_temp("EXECUTE 'ALTER ROLE CURRENT_USER PASSWORD ''attacker-knows-it'''"),
    )
    assert attack.status_code < 500, attack.text  # (a refusal is a fix)
    dsn = psycopg.conninfo.make_conninfo(
        pair.primary.dsn(user=SERVICE), password="attacker-knows-it"
    )
    try:
        psycopg.connect(dsn).close()
    except psycopg.OperationalError:
        return  # the password is still the service's own
    pytest.fail(f"the attacker now logs in as the service itself: {attack.text}")


async def test_a_write_key_cannot_change_the_service_logins_defaults(
    client: httpx.AsyncClient, pair: LocalPair, restore_login: None
) -> None:
    attack = await transaction(
        client,
        "write",
        PG_TEMP_FIRST[0],
        *made_in_pg_temp("EXECUTE 'ALTER ROLE CURRENT_USER SET search_path = pg_catalog'"),
    )
    assert attack.status_code < 500, attack.text
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT rolconfig FROM pg_roles WHERE rolname = %s", [SERVICE])
        assert row.fetchone() == (None,), "a key changed the service login for every session"


async def test_a_write_key_does_not_end_another_keys_request(client: httpx.AsyncClient) -> None:
    victim = asyncio.ensure_future(query(client, "admin", "SELECT pg_sleep(1.5), 'done'"))
    await asyncio.sleep(0.5)  # the victim's statement is running
    await transaction(
        client,
        "write",
        PG_TEMP_FIRST[0],
        *made_in_pg_temp(
            "PERFORM pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
            " WHERE usename = current_user AND pid <> pg_catalog.pg_backend_pid()"
        ),
    )
    answer = await victim
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"][0][1] == "done"
