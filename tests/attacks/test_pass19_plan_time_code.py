"""Nineteenth review pass (attacker): the planner runs the database's own IMMUTABLE functions
of a partial index's predicate and of an inheritance child's CHECK constraint when a read
key's SELECT is planned, and both count only for writes.

app/sql/schema_queries.py CODE_TEXTS_SQL and CODE_DEPENDENCIES_SQL count an index's
expressions and predicate, and a CHECK constraint, as code run when the table is written
(false, true). But PostgreSQL folds the constants of those expressions when it plans a
*read*: the relation cache's partial index predicate (RelationGetIndexPredicate, so any
SELECT of the table, to see whether the index applies) and, for an inheritance child or a
partition, its CHECK constraints (relation_excluded_by_constraints, constraint_exclusion =
partition, when its parent is read), and an expression index's expressions likewise
(RelationGetIndexExpressions, on any SELECT of the table). An IMMUTABLE function of the
database's own with constant arguments is called there. Extended statistics on expressions
(CREATE STATISTICS ... ON (x + f(3)), y FROM t) are folded the same way on any plan of the
table (get_relation_statistics), and pg_statistic_ext is neither read nor in the
fingerprint: such statistics made after start-up are never seen at all. A partition key's
expressions, counted for writes only, are folded when the relation cache builds the key, on
any read of the partitioned table. So a read key's

    POST /v1/query {"sql": "SELECT count(*) FROM pidx19"}
    POST /v1/query {"sql": "SELECT count(*) FROM parent19c WHERE x = 1"}
    POST /v1/query {"sql": "SELECT count(*) FROM eidx19 WHERE x = 1"}
    POST /v1/query {"sql": "SELECT count(*) FROM stx19 WHERE x = 1"}
    POST /v1/query {"sql": "SELECT count(*) FROM pkey19"}

are judged to run nothing, and what the function left (a session advisory lock) is the
next key's.
"""

from __future__ import annotations

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import leaves_no_lock, schema_seen
from tests.conftest import as_owner

TABLES = (
    "public.pkey19, public.stx19, public.eidx19, public.pidx19, public.child19c, public.parent19c"
)


@pytest.fixture
async def planned(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.fold19(i int4) RETURNS int4"
        " LANGUAGE plpgsql IMMUTABLE AS"
        f" $$ BEGIN IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock(1919);"
        " END IF; RETURN i; END $$",
        f"DROP TABLE IF EXISTS {TABLES}",
        "CREATE TABLE public.pidx19 (x int4)",
        "CREATE INDEX pidx19_x ON public.pidx19 (x) WHERE x > public.fold19(2)",
        "CREATE TABLE public.eidx19 (x int4)",
        "CREATE INDEX eidx19_x ON public.eidx19 ((x + public.fold19(1)))",
        "CREATE TABLE public.stx19 (x int4, y int4)",
        "CREATE STATISTICS public.stx19_s ON (x + public.fold19(3)), y FROM public.stx19",
        "CREATE TABLE public.pkey19 (x int4) PARTITION BY RANGE ((x + public.fold19(4)))",
        "CREATE TABLE public.pkey19_a PARTITION OF public.pkey19 FOR VALUES FROM (0) TO (100)",
        "CREATE TABLE public.parent19c (x int4)",
        "CREATE TABLE public.child19c (CHECK (x > public.fold19(5))) INHERITS (public.parent19c)",
        f"GRANT SELECT ON {TABLES} TO PUBLIC",
        "SELECT pg_advisory_unlock_all()",
    )
    await schema_seen(client)


@pytest.mark.parametrize(
    "attack",
    [
        "SELECT count(*) FROM pidx19",
        "SELECT count(*) FROM parent19c WHERE x = 1",
        "SELECT count(*) FROM eidx19 WHERE x = 1",
        "SELECT count(*) FROM stx19 WHERE x = 1",
        "SELECT count(*) FROM pkey19",
    ],
    ids=[
        "partial-index-predicate",
        "child-check-exclusion",
        "expression-index-constant-folded",
        "statistics-expression-folded",
        "partition-key-expression-folded",
    ],
)
async def test_no_session_lock_outlives_a_plan(
    client: httpx.AsyncClient, planned: None, pair: LocalPair, attack: str
) -> None:
    await leaves_no_lock(client, pair, "read", attack)
