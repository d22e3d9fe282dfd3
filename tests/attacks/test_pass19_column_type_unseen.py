"""Nineteenth review pass (attacker): a column's type changed without a table rewrite is
never seen.

app/sql/schema_queries.py FINGERPRINT_SQL sums (oid, xmin) over the catalogs whose rows
say what runs code, and the service reads the whole catalog again only when that sum
changes. A relation's columns and their types are in pg_attribute, which it does not count.
`ALTER TABLE t ALTER COLUMN c TYPE d` to a domain over the column's own type with no
constraint needs no rewrite, so it changes no row of pg_class, pg_type or any other counted
catalog: the fingerprint stays the same and the facts read before the migration (column c
is plain text, writing t runs nothing) hold for ever. The domain's DEFAULT calls the
database's own function, which PostgreSQL now runs on every INSERT that leaves the column
out; what it leaves in the session (here a session advisory lock) is the next key's.

A read key has the same through a composite type: `ALTER TYPE comp ALTER ATTRIBUTE f TYPE
chk` (chk a domain whose CHECK calls the database's own function) has nothing to rewrite,
changes pg_attribute alone, and from then on `SELECT (ROW('x')::comp).f` or
`jsonb_populate_record(NULL::comp, ...)` (likewise) runs the check with comp still judged clean.
"""

from __future__ import annotations

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, query, schema_seen
from tests.conftest import as_owner


@pytest.fixture
async def retyped(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.f19col() RETURNS text"
        " LANGUAGE sql AS $$ SELECT 'x' WHERE pg_try_advisory_lock(1919) $$",
        "DO $$ BEGIN CREATE DOMAIN public.d19col AS text DEFAULT public.f19col();"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "DROP TABLE IF EXISTS public.t19col",
        "CREATE TABLE public.t19col (id int, c text)",
        "GRANT SELECT, INSERT ON public.t19col TO PUBLIC",
    )
    await schema_seen(client)  # t19col: writing it runs nothing
    # a migration: the column becomes the domain, no rewrite (the domain has no constraint)
    as_owner(pair, "ALTER TABLE public.t19col ALTER COLUMN c TYPE public.d19col")
    await schema_seen(client)  # a reading begun after the migration


@pytest.fixture
async def reattributed(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.ok19col(v text) RETURNS bool"
        " LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(1919) IS NOT NULL $$",
        "DO $$ BEGIN CREATE DOMAIN public.chk19col AS text CHECK (public.ok19col(VALUE));"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "DROP TYPE IF EXISTS public.comp19col",
        "CREATE TYPE public.comp19col AS (f text)",
    )
    await schema_seen(client)  # comp19col: making one runs nothing
    as_owner(pair, "ALTER TYPE public.comp19col ALTER ATTRIBUTE f TYPE public.chk19col")
    await schema_seen(client)


@pytest.mark.parametrize(
    "attack",
    [
        "SELECT (ROW('x')::comp19col).f",
        "SELECT CAST(ROW('x') AS public.comp19col)",
    ],
    ids=["row-cast", "cast-qualified"],
)
async def test_a_composite_reattributed_is_seen(
    client: httpx.AsyncClient, reattributed: None, pair: LocalPair, attack: str
) -> None:
    r = await query(client, "read", attack)
    assert r.status_code == 200, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, f"a session lock outlived {attack!r}: {r.text}"


@pytest.mark.parametrize(
    ("key", "attack"),
    [
        ("write", "INSERT INTO t19col (id) VALUES (1)"),
        ("write", "INSERT INTO public.t19col DEFAULT VALUES"),
    ],
    ids=["insert-leaving-the-column-out", "default-values"],
)
async def test_a_column_retyped_without_rewrite_is_seen(
    client: httpx.AsyncClient, retyped: None, pair: LocalPair, key: str, attack: str
) -> None:
    r = await query(client, key, attack)
    assert r.status_code == 200, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, f"a session lock outlived {attack!r}: {r.text}"
