"""Nineteenth review pass (attacker): writing a table whose foreign key references a column
indexed with an operator class of the database's own runs that class's support function,
with nothing counted for the table written.

Pass 18 made an index whose operator class has a support function of the database's own
count for *its* table, read and written (app/sql/schema_queries.py CODE_DEPENDENCIES_SQL,
_OWN_CLASSES). A foreign key's check runs on the *referencing* table's writes: PostgreSQL's
RI trigger looks the new key up in the referenced table, through its unique index, so the
class's comparison function runs on every INSERT into (or UPDATE of the key of) the
referencing table. The facts follow writes from a referenced table to the tables its
foreign keys cascade to (WRITE_EDGES_SQL), never from a referencing table to the table it
references, and the constraint depends on the class's `=` (a catalog operator here, as in
any btree class for int4), not on the function. So `INSERT INTO child19f VALUES (42)` by a
write key is judged to run nothing, and what the function left (a session advisory lock)
is the next key's.

The other direction holds the same hole: deleting from (or updating the key of) a referenced
table whose foreign key is NO ACTION or RESTRICT (no cascade, so no write edge) runs the
check `SELECT 1 FROM ONLY child WHERE pid = $1 FOR KEY SHARE`, through the referencing
table's index of that operator class: `DELETE FROM parent19r WHERE id = 4999` (and
`UPDATE parent19r SET id = 6000 WHERE id = 4998`).
"""

from __future__ import annotations

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import leaves_no_lock, schema_seen
from tests.conftest import as_owner


@pytest.fixture
async def referenced(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.fk19_cmp(a int4, b int4) RETURNS int4"
        " LANGUAGE plpgsql IMMUTABLE AS"
        f" $$ BEGIN IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock(1919);"
        " END IF; RETURN btint4cmp(a, b); END $$",
    )
    with pair.primary.connect() as conn:  # an operator class is a superuser's to make
        conn.execute(
            "DO $$ BEGIN CREATE OPERATOR CLASS public.int4_fk19_ops FOR TYPE int4"
            " USING btree AS OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=,"
            " OPERATOR 5 >, FUNCTION 1 public.fk19_cmp(int4, int4);"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
    as_owner(
        pair,
        "DROP TABLE IF EXISTS public.child19f, public.parent19f",
        "CREATE TABLE public.parent19f (id int4)",
        "INSERT INTO public.parent19f SELECT g FROM generate_series(1, 5000) g",
        "CREATE UNIQUE INDEX parent19f_id ON public.parent19f (id int4_fk19_ops)",
        "ANALYZE public.parent19f",
        "CREATE TABLE public.child19f (pid int4 REFERENCES public.parent19f (id), n int4)",
        "INSERT INTO public.child19f VALUES (1, 0)",
        "GRANT SELECT, INSERT, UPDATE ON public.child19f TO PUBLIC",
        "SELECT pg_advisory_unlock_all()",
    )
    await schema_seen(client)


@pytest.mark.parametrize(
    "attack",
    [
        "INSERT INTO child19f VALUES (42, 0)",
        "UPDATE child19f SET pid = 44 WHERE pid = 1",
    ],
    ids=["insert-values", "update-key"],
)
async def test_no_session_lock_outlives_a_foreign_key_check(
    client: httpx.AsyncClient, referenced: None, pair: LocalPair, attack: str
) -> None:
    await leaves_no_lock(client, pair, "write", attack)


@pytest.fixture
async def referencing(pair: LocalPair, referenced: None, client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "DROP TABLE IF EXISTS public.child19r, public.parent19r",
        "CREATE TABLE public.parent19r (id int4 PRIMARY KEY)",
        "INSERT INTO public.parent19r SELECT g FROM generate_series(1, 5000) g",
        "CREATE TABLE public.child19r (pid int4 REFERENCES public.parent19r (id))",
        "INSERT INTO public.child19r SELECT g FROM generate_series(1, 4000) g",
        "CREATE INDEX child19r_pid ON public.child19r (pid int4_fk19_ops)",
        "ANALYZE public.parent19r, public.child19r",
        "GRANT SELECT, DELETE, UPDATE ON public.parent19r TO PUBLIC",
        "SELECT pg_advisory_unlock_all()",
    )
    await schema_seen(client)


@pytest.mark.parametrize(
    "attack",
    ["DELETE FROM parent19r WHERE id = 4999"],
    ids=["delete-referenced"],
)
async def test_no_session_lock_outlives_a_referenced_tables_check(
    client: httpx.AsyncClient, referencing: None, pair: LocalPair, attack: str
) -> None:
    await leaves_no_lock(client, pair, "write", attack)
