"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

The start-up check (app/cluster/logins.py) reads the login's own attributes and its
membership of the three server-file roles only. A login that is a member of a superuser
role (or of one that may create roles or bypass row-level security) passes it, and any key
then becomes that role with SET ROLE: a read key with SET LOCAL ROLE, which read-only
requests may send."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from app.api.auth import hash_key
from app.devdb import SUPERUSER, LocalPair
from app.errors import SettingsError
from tests.conftest import login_role, serving_ready, settings_for

READ_KEY = f"read-{uuid.uuid4().hex}"


def powerful_role(pair: LocalPair, attribute: str) -> str:
    """A NOLOGIN role with `attribute` (SUPERUSER, CREATEROLE, BYPASSRLS)."""
    name = f"powers_{uuid.uuid4().hex[:8]}"
    with pair.primary.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN " + attribute).format(sql.Identifier(name)))
    return name


@pytest.mark.parametrize(
    ("granted", "check"),
    [
        (lambda pair: SUPERUSER, "SELECT current_setting('is_superuser')"),
        (
            lambda pair: powerful_role(pair, "SUPERUSER"),
            "SELECT current_setting('is_superuser')",
        ),
        (
            lambda pair: powerful_role(pair, "CREATEROLE"),
            "SELECT rolcreaterole::text FROM pg_roles WHERE rolname = current_user",
        ),
        (
            lambda pair: powerful_role(pair, "BYPASSRLS"),
            "SELECT rolbypassrls::text FROM pg_roles WHERE rolname = current_user",
        ),
    ],
    ids=["member-of-postgres", "member-of-a-superuser-role", "createrole", "bypassrls"],
)
async def test_a_login_that_may_become_a_privileged_role_stops_start_up(
    pair: LocalPair, granted: object, check: str
) -> None:
    name, password = login_role(pair, "member")
    role = granted(pair)  # type: ignore[operator]
    with pair.primary.connect() as conn:
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(pair.primary.dsn(), user=name, password=password)
    keys = [{"id": "reader", "sha256": hash_key(READ_KEY), "scopes": ["read"]}]
    settings = settings_for(pair, primary_dsn=dsn, mirror_dsn=None, auth="keys", api_keys=keys)
    try:
        async with serving_ready(settings) as (_, client):
            body = {
                "statements": [{"sql": f"SET LOCAL ROLE {role}"}, {"sql": check}],
                "read_only": True,
            }
            answer = await client.post(
                "/v1/transaction", json=body, headers={"Authorization": f"Bearer {READ_KEY}"}
            )
    except SettingsError:
        return  # refused at start-up, as a superuser login itself is
    finally:
        with pair.primary.connect() as conn:  # no member of a superuser left in the pair
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
    pytest.fail(f"start-up passed; then a read key became {role}: {answer.text}")
