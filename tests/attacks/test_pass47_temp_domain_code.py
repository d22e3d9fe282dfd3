"""Pass 47: a temporary table whose column type carries code of the database's own keeps
the catalog's facts known (Tree.temp_only), yet an INSERT into it runs that code with none of
the care taken before such code (other keys' statements prepared on the pooled connection
are not deallocated first, pass 22 / 44): the code reads them.

    owner:  CREATE FUNCTION peek47() RETURNS text LANGUAGE sql
              AS $$ SELECT string_agg(statement, ' | ') FROM pg_prepared_statements $$
            CREATE DOMAIN seen47 AS text DEFAULT public.peek47()
            CREATE TYPE comp47 AS (id int, seen seen47)
    admin:  SELECT v AS secret_text_47 FROM s47 WHERE id = $1::int    (3 times: prepared)
    write:  /v1/transaction:
              CREATE TEMP TABLE m47 (id int, seen seen47)      (or LIKE comp47)
              INSERT INTO m47 (id) VALUES (1) RETURNING seen
                -> the admin key's SQL text

Root cause: a domain whose only code is its DEFAULT counts only for writes of permanent
relations with such a column (schema_code.read: typed_written); its name is not among
SchemaCode.own_functions (type_names is built from `typed`, checks and casts only), so
runs_unseen_code() finds nothing in the CREATE's TypeName. And LIKE of a composite type
names a relation (RangeVar) that NAMES_SQL (relkinds r, v, m, p, f) never lists, so its
coded columns count in neither write_coded nor read_coded, and the type's name (in
own_functions when a field's domain has a check) is matched only against own_call_names,
never relation_names. Before temp_only, the CREATE made the facts UNKNOWN for the whole
transaction, and the INSERT was then judged as code.

Fixed (app/sql/tree_nodes.py makes_only_temporary): a CREATE TEMP TABLE keeps the facts known
only when it copies nothing (no LIKE, no OF a type) and every column is of one of
PostgreSQL's own types; these four make the facts unknown, as any DDL does, and the INSERT
is judged once the catalog is read again: its code runs after the care, and reads nothing.
"""

from __future__ import annotations

import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, query, transaction

SETUP = (
    "CREATE TABLE IF NOT EXISTS public.s47 (id int PRIMARY KEY, v text)",
    "INSERT INTO public.s47 VALUES (1, 'x') ON CONFLICT DO NOTHING",
    "CREATE OR REPLACE FUNCTION public.peek47() RETURNS text LANGUAGE sql AS"
    " $$ SELECT coalesce(string_agg(statement, ' | '), '') FROM pg_prepared_statements $$",
    "CREATE OR REPLACE FUNCTION public.check47(v text) RETURNS boolean LANGUAGE plpgsql AS"
    " $$ BEGIN RAISE EXCEPTION 'seen: %', public.peek47(); END $$",
    "CREATE DOMAIN public.seen47 AS text DEFAULT public.peek47()",
    "CREATE DOMAIN public.checked47 AS text CHECK (public.check47(VALUE))",
    "CREATE TYPE public.comp47 AS (id int, seen seen47)",
    "CREATE TYPE public.compc47 AS (id int, c checked47)",
    f"GRANT SELECT ON public.s47 TO {SERVICE}",
)
TEARDOWN = (
    "DROP TYPE IF EXISTS public.comp47, public.compc47",
    "DROP DOMAIN IF EXISTS public.seen47, public.checked47",
    "DROP FUNCTION IF EXISTS public.check47(text)",
    "DROP FUNCTION IF EXISTS public.peek47()",
    "DROP TABLE IF EXISTS public.s47",
)
SECRET = "SELECT v AS secret_text_47 FROM s47 WHERE id = $1::int"

ATTACKS = [
    # a domain's default: its name is not among the facts' own names
    (
        "CREATE TEMP TABLE m47 (id int, seen seen47)",
        "INSERT INTO m47 (id) VALUES (1) RETURNING seen",
    ),
    (
        'CREATE TABLE pg_temp.m47 (id int, seen public."seen47")',
        "INSERT INTO m47 (id) VALUES (1) RETURNING seen",
    ),
    # LIKE of a composite type: a relation no reading of the catalog names
    ("CREATE TEMP TABLE m47 (LIKE comp47)", "INSERT INTO m47 (id) VALUES (1) RETURNING seen"),
    # ... whose field is a checked domain (its name is in the facts, as a type only)
    ("CREATE TEMP TABLE m47 (LIKE public.compc47)", "INSERT INTO m47 VALUES (1, 'x') RETURNING c"),
]


@pytest.mark.parametrize(
    ("create", "insert"),
    ATTACKS,
    ids=["default", "default-pg-temp", "like-composite", "like-composite-check"],
)
async def test_code_on_a_temporary_table_reads_no_other_keys_statements(
    pair: LocalPair, create: str, insert: str
) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        for _ in range(3):
            r = await query(client, "admin", SECRET, params=[1])
            assert r.status_code == 200, r.text
        r = await transaction(client, "write", create, insert)
        said = r.text
        if r.status_code == 200:
            said = str(r.json()["results"][1]["rows"])
        assert "secret_text_47" not in said, f"the owner's code on the temporary table read: {said}"
        # (it ran, after the care: the statements prepared for others were gone by then)
        if "compc47" in create:
            assert r.status_code == 400 and r.json()["detail"] == "seen: ", r.text
        else:
            assert r.status_code == 200 and said == "[['']]", r.text
