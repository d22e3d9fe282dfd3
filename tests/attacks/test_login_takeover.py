"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

ALTER ROLE / ALTER USER are refused by their statement kind only (app/sql/refusals.py):
a write key runs them all the same from a DO block (allowed to write keys, only closed
after) or from a function it creates in pg_temp, and an ordinary login may change its own
password and session defaults. The service's login then carries the attacker's defaults
into every later session, every key's, or its password is the attacker's."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import transaction


def temp_function(body: str) -> tuple[str, str]:
    return (
        "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE plpgsql AS "
        f"$f$ BEGIN EXECUTE {body}; RETURN 1; END $f$",
        "SELECT pg_temp.f()",
    )


def rolconfig(pair: LocalPair) -> object:
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT rolconfig FROM pg_roles WHERE rolname = %s", [SERVICE])
        return row.fetchone()


SET_DEFAULTS = [
    ("DO $$ BEGIN EXECUTE 'ALTER ROLE CURRENT_USER SET search_path = pg_catalog'; END $$",),
    (
        "do $$ begin execute 'alter user ' || current_user"
        " || ' set search_path = pg_catalog'; end $$",
    ),
    temp_function("'ALTER ROLE CURRENT_USER SET search_path = pg_catalog'"),
]


@pytest.mark.parametrize("attack", SET_DEFAULTS)
async def test_a_write_key_cannot_change_the_service_logins_defaults(
    client: httpx.AsyncClient, pair: LocalPair, restore_login: None, attack: tuple[str, ...]
) -> None:
    before = rolconfig(pair)
    await transaction(client, "write", *attack)
    # A DO block's connection is closed after it: the next session, another key's, starts
    # with the attacker's defaults (after a pg_temp function the connection is only reset,
    # so the sessions opened later do).
    shown = await transaction(client, "admin", "SHOW search_path")
    if attack[0].lower().startswith("do"):
        assert shown.json()["results"][0]["rows"] == [['"$user", public']], shown.text
    assert rolconfig(pair) == before, "a key changed the service login for every session"


PASSWORDS = [
    ("DO $$ BEGIN EXECUTE 'ALTER ROLE CURRENT_USER PASSWORD ''attacker-knows-it'''; END $$",),
    temp_function("'ALTER USER CURRENT_USER PASSWORD ''attacker-knows-it'''"),
]


@pytest.mark.parametrize("attack", PASSWORDS)
async def test_a_write_key_cannot_set_the_service_logins_password(
    client: httpx.AsyncClient, pair: LocalPair, restore_login: None, attack: tuple[str, ...]
) -> None:
    await transaction(client, "write", *attack)
    dsn = psycopg.conninfo.make_conninfo(
        pair.primary.dsn(user=SERVICE), password="attacker-knows-it"
    )
    try:
        psycopg.connect(dsn).close()
    except psycopg.OperationalError:
        return  # the password is still the service's own
    pytest.fail("the attacker now logs in as the service itself, with its own password")
