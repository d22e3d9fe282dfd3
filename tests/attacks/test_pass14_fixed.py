"""Fourteenth review pass, the fixes' own checks: more forms in which PostgreSQL's analyser
picks an operator by name (NOT BETWEEN, NOT IN (SELECT ...), `= ANY (SELECT ...)`), one in
which it does not (a recursive CTE's CYCLE mark: compared by its type's default operator
class, which only a superuser makes, so an own `<>` of the mark's type is never run), and a
domain's default of own code set around the service, which the catalog watch sees by its
fingerprint (pg_type)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, leaves_no_lock, query, schema_seen
from tests.conftest import as_owner

_OPERATORS = ("<", ">", "=")


@pytest.fixture
async def own_operators(
    pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient
) -> AsyncIterator[None]:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.claim14x(a text, b int) RETURNS bool"
        " LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(1450 + b) $$",
        *(f"DROP OPERATOR IF EXISTS public.{op} (text, int)" for op in _OPERATORS),
        *(
            f"CREATE OPERATOR public.{op} (LEFTARG = text, RIGHTARG = int,"
            " FUNCTION = public.claim14x)"
            for op in _OPERATORS
        ),
        "DO $$ BEGIN CREATE TYPE public.mark14x AS ENUM ('no', 'yes');"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE OR REPLACE FUNCTION public.claim14xm(a public.mark14x, b public.mark14x)"
        " RETURNS bool LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(1459) OR a::text <> b::text"
        " $$",
        "DROP OPERATOR IF EXISTS public.<> (public.mark14x, public.mark14x)",
        "CREATE OPERATOR public.<> (LEFTARG = public.mark14x, RIGHTARG = public.mark14x,"
        " FUNCTION = public.claim14xm)",
    )
    await schema_seen(client)
    yield
    as_owner(
        pair,
        *(f"DROP OPERATOR IF EXISTS public.{op} (text, int)" for op in _OPERATORS),
        "DROP OPERATOR IF EXISTS public.<> (public.mark14x, public.mark14x)",
        "DROP FUNCTION IF EXISTS public.claim14x(text, int)",
    )


@pytest.mark.parametrize(
    "attack",
    [
        "SELECT id FROM pub WHERE v NOT BETWEEN 1 AND 2",
        "SELECT id FROM pub WHERE v NOT IN (SELECT 3)",
        "SELECT id FROM pub WHERE v = ANY (SELECT 4)",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n FROM r)"
        " CYCLE n SET c TO mark14x 'yes' DEFAULT mark14x 'no' USING p SELECT n FROM r",
    ],
    ids=["not-between-own-lt-gt", "not-in-subquery-own-eq", "eq-any-subquery", "cycle-mark"],
)
async def test_no_session_lock_outlives_an_operator_picked_by_name(
    client: httpx.AsyncClient, own_operators: None, pair: LocalPair, attack: str
) -> None:
    await leaves_no_lock(client, pair, "read", attack)


async def test_a_domain_default_set_around_the_service_is_seen(
    client: httpx.AsyncClient, pair: LocalPair, world: dict[str, str]
) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.claim14xd() RETURNS int LANGUAGE sql"
        " AS $$ SELECT CASE WHEN pg_try_advisory_lock(1458) THEN 1 ELSE 0 END $$",
        "DO $$ BEGIN CREATE DOMAIN public.stamp14x AS int;"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "ALTER DOMAIN public.stamp14x DROP DEFAULT",
        "CREATE TABLE IF NOT EXISTS public.stamped14x (id int, s public.stamp14x)",
    )
    await schema_seen(client)
    # a migration made around the service (the domain's pg_type row changes)
    as_owner(pair, "ALTER DOMAIN public.stamp14x SET DEFAULT public.claim14xd()")
    await schema_seen(client)
    r = await query(client, "write", "INSERT INTO stamped14x (id) VALUES (1)")
    assert r.status_code == 200, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, "a domain default set by a migration was never seen"
