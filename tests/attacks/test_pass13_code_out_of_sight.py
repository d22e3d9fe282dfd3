"""Thirteenth review pass (attacker): code of the database's own that runs when a relation
is written, but that app/sql/schema_code.py does not tie to the relation the statement names.

The catalog read ties a trigger, a default or a check constraint to the relation whose
pg_class row holds it, and a view to what it reads; it does not follow:

- partitions and inheritance children (pg_inherits): writing a partitioned table, or an
  inheritance parent, fires the triggers of the partition or child a row lands in (and
  checks its constraints), though the statement names only the parent;
- domains over domains, arrays of a domain, composite types with a domain field: a column
  of type `outer_d` (a domain over a domain with a CHECK), `checked_d[]` or `pair` (a
  composite type with a `checked_d` field) runs that CHECK on every write, though the
  column's atttypid is not the constrained domain's oid;
- foreign keys: an UPDATE or DELETE of the referenced table cascades to the referencing
  table and fires its triggers.

Such a write is judged Effect.NONE (and may share a lane): whatever the code left in the
session (here a session advisory lock, as a job-claiming function takes one) is the next
key's.
"""

from __future__ import annotations

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, query, schema_seen
from tests.conftest import as_owner


@pytest.fixture
async def hidden_code(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.claim13(id bigint) RETURNS bool"
        " LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(id) $$",
        "CREATE OR REPLACE FUNCTION public.claim13_row() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM claim13(1301); RETURN NEW; END $$",
        # a partitioned table whose partition has a trigger
        "CREATE TABLE IF NOT EXISTS public.events13 (id int) PARTITION BY RANGE (id)",
        "CREATE TABLE IF NOT EXISTS public.events13_p PARTITION OF public.events13"
        " FOR VALUES FROM (0) TO (1000000)",
        "DROP TRIGGER IF EXISTS claim ON public.events13_p",
        "CREATE TRIGGER claim BEFORE INSERT OR UPDATE OR DELETE ON public.events13_p"
        " FOR EACH ROW EXECUTE FUNCTION claim13_row()",
        # a partition with a check constraint of its own
        "CREATE OR REPLACE FUNCTION public.claim13_check(id int) RETURNS bool"
        " LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(1303) $$",
        "CREATE TABLE IF NOT EXISTS public.ledger13 (id int) PARTITION BY RANGE (id)",
        "CREATE TABLE IF NOT EXISTS public.ledger13_p PARTITION OF public.ledger13"
        " (CONSTRAINT claimed CHECK (claim13_check(id))) FOR VALUES FROM (0) TO (1000000)",
        # an inheritance parent whose child has a trigger
        "CREATE TABLE IF NOT EXISTS public.base13 (id int)",
        "CREATE TABLE IF NOT EXISTS public.child13 () INHERITS (public.base13)",
        "DROP TRIGGER IF EXISTS claim ON public.child13",
        "CREATE TRIGGER claim BEFORE UPDATE OR DELETE ON public.child13"
        " FOR EACH ROW EXECUTE FUNCTION claim13_row()",
        "INSERT INTO public.child13 SELECT 1 WHERE NOT EXISTS (SELECT FROM public.child13)",
        # a domain over a checked domain, and an array of a checked domain
        "DO $$ BEGIN CREATE DOMAIN public.claimed13 AS int CHECK (claim13(1302));"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "DO $$ BEGIN CREATE DOMAIN public.outer13 AS public.claimed13;"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE TABLE IF NOT EXISTS public.nested13 (v public.outer13)",
        "CREATE TABLE IF NOT EXISTS public.arrays13 (v public.claimed13[])",
        # a composite type with a checked domain field
        "DO $$ BEGIN CREATE TYPE public.pair13 AS (a public.claimed13);"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE TABLE IF NOT EXISTS public.pairs13 (v public.pair13)",
        # a foreign key whose ON DELETE / ON UPDATE CASCADE writes a table with a trigger
        "CREATE TABLE IF NOT EXISTS public.owners13 (id int PRIMARY KEY)",
        "CREATE TABLE IF NOT EXISTS public.owned13 (owner int REFERENCES public.owners13"
        " ON DELETE CASCADE ON UPDATE CASCADE)",
        "DROP TRIGGER IF EXISTS claim ON public.owned13",
        "CREATE TRIGGER claim BEFORE UPDATE OR DELETE ON public.owned13"
        " FOR EACH ROW EXECUTE FUNCTION claim13_row()",
        "INSERT INTO public.owners13 VALUES (1) ON CONFLICT DO NOTHING",
        "INSERT INTO public.owned13 SELECT 1 WHERE NOT EXISTS (SELECT FROM public.owned13)",
    )
    await schema_seen(client)


@pytest.mark.parametrize(
    "attack",
    [
        "INSERT INTO events13 VALUES (1)",
        "INSERT INTO ledger13 VALUES (1)",
        "UPDATE base13 SET id = id",
        "INSERT INTO nested13 VALUES (1)",
        "INSERT INTO arrays13 VALUES ('{1}')",
        "INSERT INTO pairs13 VALUES ('(1)')",
        "DELETE FROM owners13 WHERE id = 1",
    ],
    ids=[
        "partition-trigger",
        "partition-check",
        "inheritance-child-trigger",
        "domain-over-domain",
        "domain-array",
        "composite-domain-field",
        "foreign-key-cascade",
    ],
)
async def test_no_session_lock_outlives_hidden_code(
    client: httpx.AsyncClient, hidden_code: None, pair: LocalPair, attack: str
) -> None:
    r = await query(client, "write", attack)
    assert r.status_code == 200, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, f"a session lock outlived {attack!r}: {r.text}"
