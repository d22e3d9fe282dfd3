"""The bound on sequences and indexes one statement makes (app/sql/refusals.py
MAX_OBJECTS_MADE): each takes an entry of the server's shared lock table until its
transaction ends. Pass 42 measured a temporary table of 1,600 serial columns at 1,601
entries, and 14 of them in one transaction held 22,414; the 15th filled the table."""

from __future__ import annotations

import pytest

from app.sql import refusals
from app.sql.tree import parse


def columns(kind: str, n: int) -> str:
    return ", ".join(f"c{i} {kind}" for i in range(n))


@pytest.mark.parametrize(
    "sql",
    [
        f"CREATE TEMP TABLE t ({columns('serial', 1600)})",
        f"CREATE TEMP TABLE t ({columns('serial', 5)})",
        f"CREATE TEMP TABLE t ({columns('SERIAL8', 5)})",
        f"CREATE TEMP TABLE t ({columns('pg_catalog.smallserial', 5)})",
        f"CREATE TEMPORARY TABLE pg_temp.t ({columns('bigserial', 5)})",
        f"CREATE TABLE t ({columns('int GENERATED ALWAYS AS IDENTITY', 5)})",
        f"CREATE TEMP TABLE t ({columns('int UNIQUE', 5)})",
        f"CREATE TEMP TABLE t ({columns('int', 20)}, "
        + ", ".join(f"UNIQUE (c{i})" for i in range(5))
        + ")",
        f"CREATE TEMP TABLE t ({columns('serial PRIMARY KEY', 3)})",
        "ALTER TABLE t " + ", ".join(f"ADD COLUMN c{i} serial" for i in range(5)),
        "CREATE TEMP TABLE /* many */ t ("
        + columns("serial4", 3)
        + ", "
        + ", ".join(f"d{i} int UNIQUE" for i in range(2))
        + ")",
    ],
)
def test_a_statement_that_makes_many_sequences_or_indexes_is_refused(sql: str) -> None:
    why = refusals.refusal(parse(sql), False)
    assert why is not None and "sequences and indexes" in why, why
    assert "shared lock table" in why


@pytest.mark.parametrize(
    "sql",
    [
        f"CREATE TEMP TABLE t ({columns('serial', 4)})",
        f"CREATE TEMP TABLE t ({columns('int', 1600)})",
        f"CREATE TEMP TABLE t ({columns('public.serial8', 5)})",  # a type of the schema's
        f"CREATE TEMP TABLE t ({columns('serial[]', 5)})",  # (an array: no sequence)
        "CREATE TEMP TABLE t (id bigserial PRIMARY KEY, email text UNIQUE, n int)",  # 3,
        "CREATE INDEX ON t (n)",
        "CREATE SEQUENCE s",
    ],
)
def test_ordinary_ddl_makes_few(sql: str) -> None:
    assert refusals.refusal(parse(sql), False) is None


@pytest.mark.parametrize(
    ("sql", "rewrites"),
    [
        ("ALTER TABLE t ALTER b TYPE int8", 1),
        ("ALTER TABLE t ALTER COLUMN b SET DATA TYPE text USING b::text", 1),
        ('ALTER TABLE "t" ADD COLUMN c float8 DEFAULT random()', 1),
        ("ALTER TABLE public.t ADD c int DEFAULT 0", 1),
        ("ALTER TABLE t ADD COLUMN c bigserial", 1),
        ("ALTER TABLE t ADD COLUMN c int GENERATED ALWAYS AS (a * 2) STORED", 1),
        ("ALTER TABLE t ADD COLUMN c int GENERATED ALWAYS AS IDENTITY", 1),
        ("ALTER TABLE t SET ACCESS METHOD heap", 1),
        ("ALTER TABLE t SET LOGGED", 1),
        ("ALTER TABLE t SET UNLOGGED", 1),
        ("ALTER TABLE t ALTER a TYPE int8, /* and */ ALTER b TYPE int8", 2),
        ("CLUSTER t USING t_pkey", 1),
        ("REFRESH MATERIALIZED VIEW m", 1),
        # (an index for each of the parent's on every relation attached: pass 47)
        ("ALTER TABLE p ATTACH PARTITION x FOR VALUES IN (0, 1)", 1),
        ('ALTER TABLE /* a comment */ "p" ATTACH PARTITION pg_temp.x DEFAULT', 1),
        ('ALTER TABLE IF EXISTS ONLY public.p ATTACH PARTITION U&"\\0078" FOR VALUES IN (2)', 1),
        ("ALTER TABLE p DETACH PARTITION x", 0),
        ("ALTER TABLE t ADD COLUMN c int", 0),
        ("ALTER TABLE t DROP COLUMN b", 0),
        ("ALTER TABLE t ALTER b SET DEFAULT 1", 0),
        ("ALTER TABLE t RENAME b TO c", 0),
    ],
)
def test_a_table_rewrite_is_counted(sql: str, rewrites: int) -> None:
    # (pass 45: each makes every partition's heap and every index anew; lock_code counts 8)
    assert parse(sql).rewrites == rewrites
