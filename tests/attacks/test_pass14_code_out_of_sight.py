"""Fourteenth review pass (attacker): code of the database's own that writing a table runs,
which the catalog reading of app/sql/schema_code.py does not follow.

The reading marks a relation as running code when written for its defaults (pg_attrdef),
checks, index expressions, rules, policies and triggers, for columns of types whose casts or
checks are the database's own, and through partitions and cascading foreign keys. It misses:

- a domain's DEFAULT (pg_type.typdefaultbin): `INSERT INTO t (id) VALUES (1)` into a table
  with a column of that domain (and no default of its own) runs the domain's default;
- a partition key expression (pg_partitioned_table.partexprs): routing a row into a
  partition computes it (the dependency is recorded on the partitioned table itself, which
  CODE_DEPENDENCIES_SQL does not read: it takes pg_class dependents for indexes only).

Each is a plain INSERT that the tree shows calling nothing: Effect.NONE, so the connection
goes back as it is, and what the code left there (a session advisory lock) is the next
key's.
"""

from __future__ import annotations

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import leaves_no_lock, schema_seen
from tests.conftest import as_owner


@pytest.fixture
async def coded_tables(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        # a domain whose default takes a session lock
        "CREATE OR REPLACE FUNCTION public.claim14d() RETURNS int LANGUAGE sql"
        " AS $$ SELECT CASE WHEN pg_try_advisory_lock(1441) THEN 1 ELSE 0 END $$",
        "DO $$ BEGIN CREATE DOMAIN public.stamp14 AS int DEFAULT public.claim14d();"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE TABLE IF NOT EXISTS public.stamped14 (id int, s public.stamp14)",
        # a partition key computed by the schema's own (immutable-declared) function
        "CREATE OR REPLACE FUNCTION public.bucket14(n int) RETURNS int IMMUTABLE"
        " LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_try_advisory_lock(1442); RETURN n % 2;"
        " END $$",
        "CREATE TABLE IF NOT EXISTS public.buckets14 (n int)"
        " PARTITION BY LIST (public.bucket14(n))",
        "CREATE TABLE IF NOT EXISTS public.buckets14_0 PARTITION OF public.buckets14"
        " FOR VALUES IN (0)",
        "CREATE TABLE IF NOT EXISTS public.buckets14_1 PARTITION OF public.buckets14"
        " FOR VALUES IN (1)",
    )
    await schema_seen(client)


@pytest.mark.parametrize(
    "attack",
    [
        "INSERT INTO stamped14 (id) VALUES (1)",
        "INSERT INTO stamped14 DEFAULT VALUES",
        "INSERT INTO buckets14 VALUES (7)",
        "UPDATE buckets14 SET n = n + 1 WHERE n = 7",
    ],
    ids=[
        "domain-default",
        "domain-default-values",
        "partition-key-expression",
        "partition-key-update",
    ],
)
async def test_no_session_lock_outlives_code_a_write_runs_unseen(
    client: httpx.AsyncClient, coded_tables: None, pair: LocalPair, attack: str
) -> None:
    await leaves_no_lock(client, pair, "write", attack)
