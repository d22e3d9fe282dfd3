"""Pass 44, what held.

1. Statements that parse as temp_only (app/sql/tree.py _makes_only_temporary: the catalog's
   facts stay known while they run) yet name a permanent place: a temporary table or
   sequence in public, an identity column's sequence named in public, a foreign key to a
   permanent table. PostgreSQL refuses each (RangeVarAdjustRelationPersistence: "cannot
   create temporary relation in non-temporary schema"; "constraints on temporary tables may
   reference only temporary tables"), so nothing permanent is made and the facts hold.
   pg_temp-qualified and TABLESPACE spellings make only temporary objects.
2. Copying the owner's per-row locking code by other means than LIKE ... INCLUDING
   DEFAULTS (test_pass44_like_copies_lock_code.py): INHERITS needs the parent's owner
   (403, "must be owner of table"), and a CHECK constraint's code counts on reads too
   (schema_queries.CODE_TEXTS_SQL), so LIKE ... INCLUDING CONSTRAINTS of such a table is
   refused (400) before it runs.
"""

from __future__ import annotations

import pytest

from app.devdb import SERVICE, LocalPair
from app.sql.tree import parse
from tests.attacks.conftest import attacked_on, query, transaction

PERMANENT_PLACES = (
    "CREATE TEMP TABLE public.x44 (a int)",
    "CREATE TEMP TABLE x44 (a int GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME public.s44))",
    "CREATE TEMP SEQUENCE public.s44",
    "CREATE TEMP TABLE x44 (a int REFERENCES pub44 (id))",
)
TEMPORARY = (
    "CREATE TABLE pg_temp.x44 (a int)",
    "CREATE TEMP TABLE x44 (a int) TABLESPACE pg_default",
)
SETUP = (
    "CREATE TABLE pub44 (id int PRIMARY KEY)",
    "CREATE TABLE checked44 (id bigint CHECK (pg_try_advisory_xact_lock(id)))",
    "CREATE SEQUENCE tickets44t_seq",
    "CREATE TABLE jobs44t (id bigint, held boolean"
    " DEFAULT pg_try_advisory_xact_lock(nextval('tickets44t_seq')))",
    f"GRANT SELECT, REFERENCES ON pub44 TO {SERVICE}",
    f"GRANT SELECT, INSERT ON checked44, jobs44t TO {SERVICE}",
    f"GRANT USAGE ON SEQUENCE tickets44t_seq TO {SERVICE}",
)
TEARDOWN = (
    "DROP TABLE IF EXISTS pub44, checked44, jobs44t",
    "DROP SEQUENCE IF EXISTS tickets44t_seq, s44",
)


def permanent(pair: LocalPair) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname IN ('x44', 's44') AND relpersistence = 'p'"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("sql", PERMANENT_PLACES + TEMPORARY)
def test_temp_only_spellings(sql: str) -> None:
    assert parse(sql).temp_only


async def test_temp_only_in_a_permanent_place_is_refused_by_postgresql(pair: LocalPair) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        for sql in PERMANENT_PLACES:
            r = await query(client, "write", sql)
            assert r.status_code in (400, 403), (sql, r.text)
            assert permanent(pair) == 0, sql
        for sql in TEMPORARY:
            r = await transaction(client, "write", sql, "INSERT INTO x44 VALUES (1)")
            assert r.status_code == 200, (sql, r.text)
            assert permanent(pair) == 0, sql


async def test_other_copies_of_locking_code_are_refused(pair: LocalPair) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        r = await query(client, "write", "CREATE TEMP TABLE mine44 () INHERITS (jobs44t)")
        assert r.status_code == 403, r.text
        assert "must be owner" in r.text
        r = await transaction(
            client,
            "write",
            "CREATE TEMP TABLE mine44 (LIKE checked44 INCLUDING CONSTRAINTS)",
            "INSERT INTO mine44 SELECT g FROM generate_series(1, 100) g",
        )
        assert r.status_code == 400, r.text
        assert "locks a value per row" in r.text
