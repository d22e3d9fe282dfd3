"""Pass 44 (found while fixing its LIKE holes): code of the database's own copied by
CREATE TEMP TABLE ... (LIKE t INCLUDING DEFAULTS) runs without the care taken before such
code. Before a statement that may run code of the database's own, mirrorpool deallocates
the statements it prepared for other keys on the pooled connection (pass 22); the copy's
INSERT names only the temporary table, which no catalog reading sees, and the CREATE only
read the owner's table, whose default runs on writes. So the copied default read the other
keys' SQL:

    owner:  CREATE FUNCTION peek44() RETURNS text LANGUAGE sql
              AS $$ SELECT string_agg(statement, ' | ') FROM pg_prepared_statements $$
            CREATE TABLE leaky44 (id int, seen text DEFAULT peek44())
    admin:  SELECT v AS secret_text_44 FROM s44 WHERE id = $1::int    (3 times: prepared)
    write:  /v1/transaction:
              CREATE TEMP TABLE m44 (LIKE leaky44 INCLUDING DEFAULTS)
              INSERT INTO m44 (id) VALUES (1) RETURNING seen
                -> "SELECT v AS secret_text_44 FROM s44 WHERE id = $1::int"

(The same default written out, `CREATE TEMP TABLE m (seen text DEFAULT public.peek44())`,
calls the function by name, and so ran after the DEALLOCATE ALL: NULL.)

Fixed (app/sql/tree_walk.py _note_copied): a relation a LIKE copies counts as written by
the statement, so its writes' code counts for the CREATE (the care runs before it, and its
connection is closed after), as it does for the lock rule.
"""

from __future__ import annotations

import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, query, transaction

SETUP = (
    "CREATE TABLE IF NOT EXISTS public.s44 (id int PRIMARY KEY, v text)",
    "INSERT INTO public.s44 VALUES (1, 'x') ON CONFLICT DO NOTHING",
    "CREATE OR REPLACE FUNCTION public.peek44() RETURNS text LANGUAGE sql AS"
    " $$ SELECT string_agg(statement, ' | ') FROM pg_prepared_statements $$",
    "CREATE TABLE IF NOT EXISTS public.leaky44 (id int, seen text DEFAULT public.peek44())",
    f"GRANT SELECT ON public.s44, public.leaky44 TO {SERVICE}",
)
TEARDOWN = (
    "DROP TABLE IF EXISTS public.leaky44",
    "DROP FUNCTION IF EXISTS public.peek44()",
    "DROP TABLE IF EXISTS public.s44",
)
SECRET = "SELECT v AS secret_text_44 FROM s44 WHERE id = $1::int"


@pytest.mark.parametrize(
    "copy",
    [
        "CREATE TEMP TABLE m44 (LIKE leaky44 INCLUDING DEFAULTS)",
        'CREATE TEMP TABLE m44 (LIKE public."leaky44" INCLUDING ALL EXCLUDING INDEXES'
        " EXCLUDING IDENTITY)",
        'CREATE TABLE pg_temp.m44 (LIKE U&"leaky\\0034\\0034" INCLUDING DEFAULTS) -- a copy',
    ],
    ids=["defaults", "all-but-indexes", "pg-temp-unicode"],
)
async def test_a_copied_default_reads_no_other_keys_statements(pair: LocalPair, copy: str) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        for _ in range(3):
            r = await query(client, "admin", SECRET, params=[1])
            assert r.status_code == 200, r.text
        r = await transaction(
            client, "write", copy, "INSERT INTO m44 (id) VALUES (1) RETURNING seen"
        )
        assert r.status_code == 200, r.text
        (seen,) = r.json()["results"][1]["rows"][0]
        assert "secret_text_44" not in (seen or ""), f"the copied default read: {seen}"
