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

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import advisory_locks, query, schema_seen
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
    assert advisory_locks(pair) == 0
    r = await query(client, key, attack)
    assert r.status_code == 200, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, f"a session lock outlived {attack!r}: {r.text}"
