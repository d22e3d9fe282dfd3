"""Eighteenth review pass (attacker): an index whose operator class has a support function of
the database's own runs it on every row written, and on every scan of the index, with no
call, operator or type of the database's own in the statement.

An operator class is a superuser's to make (an extension or a DBA does), its support
functions may be anyone's: here `int4_audit18_ops`, a btree class for int4 whose comparison
function is public.audit18_cmp. app/sql/schema_queries.py CODE_DEPENDENCIES_SQL follows
pg_depend from an index straight to pg_proc, but an index depends on its operator class
(pg_opclass), and the class on its functions through pg_amproc, so the index and its table
run nothing as far as the facts go. What the function left in the session (a session
advisory lock) is the next key's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import leaves_no_lock, schema_seen
from tests.conftest import as_owner


@pytest.fixture
async def audited_index(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.audit18_cmp(a int4, b int4) RETURNS int4"
        " LANGUAGE plpgsql IMMUTABLE AS"
        f" $$ BEGIN IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock(1820);"
        " END IF; RETURN btint4cmp(a, b); END $$",
    )
    with pair.primary.connect() as conn:
        conn.execute(
            "DO $$ BEGIN CREATE OPERATOR CLASS public.int4_audit18_ops FOR TYPE int4"
            " USING btree AS OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=,"
            " OPERATOR 5 >, FUNCTION 1 public.audit18_cmp(int4, int4);"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
    as_owner(
        pair,
        "CREATE TABLE IF NOT EXISTS public.audited18 (x int4)",
        "CREATE INDEX IF NOT EXISTS audited18_x ON public.audited18 (x int4_audit18_ops)",
        "INSERT INTO public.audited18 SELECT g FROM generate_series(1, 5000) g"
        " WHERE NOT EXISTS (SELECT FROM public.audited18)",
        "ANALYZE public.audited18",
        "GRANT SELECT, INSERT ON public.audited18 TO PUBLIC",
        "SELECT pg_advisory_unlock_all()",
    )
    await schema_seen(client)


@pytest.mark.parametrize(
    ("key", "attack"),
    [
        ("write", "INSERT INTO audited18 VALUES (1), (2)"),
        ("write", "INSERT INTO audited18 SELECT 3"),
        ("read", "SELECT count(*) FROM audited18 WHERE x = 2"),
    ],
    ids=["insert-values", "insert-select", "read-key-index-scan"],
)
async def test_no_session_lock_outlives_an_index_support_function(
    client: httpx.AsyncClient, audited_index: None, pair: LocalPair, key: str, attack: str
) -> None:
    await leaves_no_lock(client, pair, key, attack)


@pytest.fixture
async def audited_partition(
    pair: LocalPair, audited_index: None, client: httpx.AsyncClient
) -> None:
    """A partitioned table whose partition (not the parent) has the index: reading the parent
    scans it."""
    as_owner(
        pair,
        "CREATE TABLE IF NOT EXISTS public.audited18p (x int4) PARTITION BY RANGE (x)",
        "CREATE TABLE IF NOT EXISTS public.audited18p_1 PARTITION OF public.audited18p"
        " FOR VALUES FROM (0) TO (100000)",
        "CREATE INDEX IF NOT EXISTS audited18p_1_x ON public.audited18p_1 (x int4_audit18_ops)",
        "INSERT INTO public.audited18p SELECT g FROM generate_series(1, 5000) g"
        " WHERE NOT EXISTS (SELECT FROM public.audited18p)",
        "ANALYZE public.audited18p_1",
        "GRANT SELECT ON public.audited18p TO PUBLIC",
        "SELECT pg_advisory_unlock_all()",
    )
    await schema_seen(client)


async def test_no_session_lock_outlives_a_partitions_index_read_through_its_parent(
    client: httpx.AsyncClient, audited_partition: None, pair: LocalPair
) -> None:
    attack = "SELECT count(*) FROM audited18p WHERE x = 2"
    await leaves_no_lock(client, pair, "read", attack, "a read of the parent")


_POINT_OPS = [
    "CREATE SCHEMA audit18t",
    "GRANT USAGE ON SCHEMA audit18t TO PUBLIC",
    *(
        f"CREATE FUNCTION audit18t.pt_{name}(a point, b point) RETURNS bool LANGUAGE sql"
        f" IMMUTABLE AS $$ SELECT a[0] {op} b[0] OR (a[0] = b[0] AND a[1] {op} b[1]) $$"
        for name, op in (("lt", "<"), ("gt", ">"))
    ),
    *(
        f"CREATE FUNCTION audit18t.pt_{name}(a point, b point) RETURNS bool LANGUAGE sql"
        f" IMMUTABLE AS $$ SELECT {body} $$"
        for name, body in (
            ("eq", "a[0] = b[0] AND a[1] = b[1]"),
            ("le", "NOT audit18t.pt_gt(a, b)"),
            ("ge", "NOT audit18t.pt_lt(a, b)"),
        )
    ),
    "CREATE FUNCTION audit18t.pt_cmp(a point, b point) RETURNS int4 LANGUAGE plpgsql IMMUTABLE"
    f" AS $$ BEGIN IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock(1821);"
    " END IF; RETURN CASE WHEN audit18t.pt_lt(a, b) THEN -1 WHEN audit18t.pt_eq(a, b) THEN 0"
    " ELSE 1 END; END $$",
    *(
        f"CREATE OPERATOR audit18t.{op} (LEFTARG = point, RIGHTARG = point,"
        f" FUNCTION = audit18t.pt_{name})"
        for name, op in (("lt", "<"), ("le", "<="), ("eq", "="), ("ge", ">="), ("gt", ">"))
    ),
    "CREATE OPERATOR CLASS audit18t.point_ops DEFAULT FOR TYPE point USING btree AS"
    " OPERATOR 1 audit18t.<, OPERATOR 2 audit18t.<=, OPERATOR 3 audit18t.=,"
    " OPERATOR 4 audit18t.>=, OPERATOR 5 audit18t.>, FUNCTION 1 audit18t.pt_cmp(point, point)",
    "CREATE TABLE public.points18 (p point)",
    "INSERT INTO public.points18 SELECT point(g % 7, g) FROM generate_series(1, 50) g",
    "GRANT SELECT ON public.points18 TO PUBLIC",
]


@pytest.fixture
async def ordered_points(pair: LocalPair, client: httpx.AsyncClient) -> AsyncIterator[None]:
    """A default B-tree class for a catalog type (point has none), its comparison function
    the database's own: sorting or grouping the type's values runs it, with no index, call,
    operator or type in the statement. Dropped afterwards: its operators' names are on every
    other test's statements."""
    with pair.primary.connect() as conn:
        for statement in _POINT_OPS:
            conn.execute(statement)
    await schema_seen(client)
    try:
        yield
    finally:
        with pair.primary.connect() as conn:
            conn.execute("DROP TABLE public.points18")
            conn.execute("DROP SCHEMA audit18t CASCADE")
            conn.execute("SELECT pg_advisory_unlock_all()")


@pytest.mark.parametrize(
    "attack",
    [
        "SELECT p FROM points18 ORDER BY p",
        "SELECT p, count(*) FROM points18 GROUP BY p",
        "SELECT DISTINCT p FROM points18",
    ],
    ids=["order-by", "group-by", "distinct"],
)
async def test_no_session_lock_outlives_a_types_default_sort(
    client: httpx.AsyncClient, ordered_points: None, pair: LocalPair, attack: str
) -> None:
    await leaves_no_lock(client, pair, "read", attack)
