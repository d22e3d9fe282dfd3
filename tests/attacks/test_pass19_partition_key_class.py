"""Nineteenth review pass (attacker): a partition key whose operator class has a support
function of the database's own runs it on every row routed and on every plan that prunes
partitions, with nothing counted for the table.

Pass 18 follows operator classes of the database's own from indexes (pg_index.indclass) and
from types' default classes (app/sql/schema_queries.py _OWN_CLASSES), and a partition key
from its expressions (pg_partitioned_table.partexprs) and its dependencies on functions,
operators and casts. A partition key over a plain column names its class in
pg_partitioned_table.partclass (and depends on the class, not on the function), which no
query reads. PostgreSQL calls the class's comparison function to route each row written
into the partitioned table and, at plan time, to prune partitions for a read key's
`SELECT ... WHERE x = 5` (or `x < 50`): what it leaves (a session advisory lock) is the next key's.
"""

from __future__ import annotations

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import leaves_no_lock, schema_seen
from tests.conftest import as_owner


@pytest.fixture
async def partitioned(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.part19_cmp(a int4, b int4) RETURNS int4"
        " LANGUAGE plpgsql IMMUTABLE AS"
        f" $$ BEGIN IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock(1919);"
        " END IF; RETURN btint4cmp(a, b); END $$",
    )
    with pair.primary.connect() as conn:  # an operator class is a superuser's to make
        conn.execute(
            "DO $$ BEGIN CREATE OPERATOR CLASS public.int4_part19_ops FOR TYPE int4"
            " USING btree AS OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=,"
            " OPERATOR 5 >, FUNCTION 1 public.part19_cmp(int4, int4);"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
    as_owner(
        pair,
        "DROP TABLE IF EXISTS public.part19",
        "CREATE TABLE public.part19 (x int4) PARTITION BY RANGE (x int4_part19_ops)",
        "CREATE TABLE public.part19_a PARTITION OF public.part19 FOR VALUES FROM (0) TO (100)",
        "CREATE TABLE public.part19_b PARTITION OF public.part19 FOR VALUES FROM (100) TO (200)",
        "GRANT SELECT, INSERT ON public.part19 TO PUBLIC",
        "SELECT pg_advisory_unlock_all()",
    )
    await schema_seen(client)


@pytest.mark.parametrize(
    ("key", "attack"),
    [
        ("write", "INSERT INTO part19 VALUES (5)"),
        ("read", "SELECT count(*) FROM part19 WHERE x = 5"),
    ],
    ids=["insert-routed", "read-key-pruning-eq"],
)
async def test_no_session_lock_outlives_a_partition_key_class(
    client: httpx.AsyncClient, partitioned: None, pair: LocalPair, key: str, attack: str
) -> None:
    await leaves_no_lock(client, pair, key, attack)
