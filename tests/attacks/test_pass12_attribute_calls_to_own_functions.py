"""Twelfth review pass (attacker): a function of the database's own, called in attribute
notation, or under a catalog function's name, is judged free of session effects.

PostgreSQL reads `(expr).f` and `alias.f` as the call `f(expr)` when `f` is not a field of
the value. Pass 4 closed this for pg_catalog's names (app/sql/session.py counts
`tree.attributes & _UNVETTED_VOLATILE`), but a function a migration made (`public.f`) is in
neither `tree.calls` nor the catalog's lists: `SELECT ('t1'::text).set_tenant` has
Effect.NONE and counts as a pure read, although the same call written `set_tenant('t1')` is
an unvetted call whose connection is reset. So whatever such a function leaves in its
session (a tenant setting that row-level security reads, a search path, a session advisory
lock) stays on the pooled connection for the next key, and the statement is taken into the
key's multiplexed lane and served by a mirror as a "pure read".

The same holds for a call written as a call whose unqualified name is a catalog function's
(`upper(...)`): app/sql/tree.py is_catalog_call takes it for pg_catalog's, but PostgreSQL's
overload resolution picks a function of the search path's other schemas whenever its
signature fits the arguments better (`public.upper(text, bool)`).

The functions here are what an application's migrations commonly make: a tenant switch for
row-level security (`set_config('app.tenant', $1, false)`), and a per-session job claim (a
session advisory lock).
"""

from __future__ import annotations

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, query, schema_seen
from tests.conftest import as_owner


@pytest.fixture
async def own_functions(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    """The schema's own code, made by its owner while the service runs; the tests start
    once the service has read the catalog again (MIRRORPOOL_SCHEMA_REFRESH_S)."""
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.set_tenant(t text) RETURNS text"
        " LANGUAGE sql AS $$ SELECT set_config('app.tenant', t, false) $$",
        "CREATE OR REPLACE FUNCTION public.claim_job(id bigint) RETURNS bool"
        " LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(id) $$",
        "CREATE OR REPLACE FUNCTION public.use_path(p text) RETURNS text"
        " LANGUAGE sql AS $$ SELECT set_config('search_path', p, false) $$",
        # A function of the schema's own that overloads a catalog name (another signature).
        "CREATE OR REPLACE FUNCTION public.upper(t text, remember bool) RETURNS text"
        " LANGUAGE sql AS $$ SELECT set_config('app.tenant', t, false) $$",
    )
    await schema_seen(client)


TENANT = "SELECT current_setting('app.tenant', true) AS t"


@pytest.mark.parametrize(
    "attack",
    [
        "SELECT ('attacker-tenant'::text).set_tenant",
        "SELECT t.set_tenant FROM unnest(ARRAY['attacker-tenant']) AS t",
        "SELECT (t).U&\"set\\005ftenant\" FROM unnest(ARRAY['attacker-tenant']) AS t",
    ],
    ids=["indirection", "alias", "u-escape"],
)
async def test_another_key_does_not_get_the_attackers_tenant(
    client: httpx.AsyncClient, own_functions: None, attack: str
) -> None:
    r = await query(client, "write", attack)
    assert r.status_code < 500, r.text
    victim = await query(client, "admin", TENANT)
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] != [["attacker-tenant"]], (
        f"the admin key's session carries the write key's tenant after {attack!r}"
    )


async def test_the_call_spelled_as_a_call_is_reset(
    client: httpx.AsyncClient, own_functions: None
) -> None:
    """The same function called as a call: the connection is reset (closed) after it."""
    r = await query(client, "write", "SELECT set_tenant('attacker-tenant')")
    assert r.status_code == 200, r.text
    victim = await query(client, "admin", TENANT)
    assert victim.json()["rows"] != [["attacker-tenant"]], victim.text


@pytest.mark.parametrize("key", ["write", "read"])
async def test_no_session_advisory_lock_outlives_the_request(
    client: httpx.AsyncClient, own_functions: None, pair: LocalPair, key: str
) -> None:
    r = await query(client, key, "SELECT (4243::bigint).claim_job")
    assert r.status_code < 500, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, f"the {key} key's session lock outlived it: {r.text}"


async def test_another_key_keeps_its_search_path(
    client: httpx.AsyncClient, own_functions: None
) -> None:
    r = await query(client, "write", "SELECT ('pg_catalog'::text).use_path")
    assert r.status_code < 500, r.text
    victim = await query(client, "admin", "SELECT current_setting('search_path')")
    assert victim.json()["rows"] == [['"$user", public']], victim.text


@pytest.mark.parametrize(
    "attack",
    [
        "SELECT upper('attacker-tenant', true)",
        "SELECT pg_catalog.upper('x') || upper('attacker-tenant', remember => true)",
        "SELECT * FROM upper('attacker-tenant', true)",
    ],
    ids=["call", "named-argument", "from"],
)
async def test_an_own_overload_of_a_catalog_name_is_no_catalog_call(
    client: httpx.AsyncClient, own_functions: None, attack: str
) -> None:
    """An unqualified name is not proof of a pg_catalog function: overload resolution picks
    the schema's own `public.upper(text, bool)` for arguments pg_catalog's do not take."""
    r = await query(client, "write", attack)
    assert r.status_code == 200, r.text
    victim = await query(client, "admin", TENANT)
    assert victim.json()["rows"] != [["attacker-tenant"]], (
        f"the admin key's session carries the write key's tenant after {attack!r}"
    )
