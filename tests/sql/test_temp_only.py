"""Which statements make only a temporary table or sequence (Tree.temp_only): the facts of
the catalog stay known while they run (app/sql/schema_watch.py changed_by), as they count
nothing in a temporary schema and the connection is closed after."""

from __future__ import annotations

import dataclasses

import pytest

from app.sql.schema_code import NOTHING, UNKNOWN, SchemaCode
from app.sql.schema_watch import SchemaWatch
from app.sql.session import Effect, effect
from app.sql.tree import parse

TEMPORARY_ONLY = [
    "CREATE TEMP TABLE t (a int)",
    "CREATE TEMPORARY TABLE t (a int)",
    "create local temp table t (a int)",
    "CREATE GLOBAL TEMPORARY TABLE t (a int)",
    "CREATE TEMP TABLE IF NOT EXISTS t (a int) ON COMMIT DROP",
    "CREATE TABLE pg_temp.t (a int)",
    'CREATE TABLE "pg_temp".t (a int)',
    'CREATE TABLE U&"pg\\005ftemp".t (a int)',
    "CREATE /* a comment */ TEMP TABLE t (a int) -- and another",
    "CREATE TEMP TABLE t (id serial PRIMARY KEY, v text UNIQUE, CHECK (id > 0))",
    "CREATE TEMP TABLE t (a pg_catalog.text, b timestamp with time zone, c varchar(9)[], d uuid)",
    'CREATE TEMP TABLE t (a U&"t\\0065xt", b double precision, c jsonb, d bytea)',
    "CREATE TEMP SEQUENCE s",
    "CREATE SEQUENCE pg_temp.s START 10",
]

# Each of these may reach beyond its session, or runs code: the facts are unknown meanwhile.
NOT_ONLY_TEMPORARY = [
    "CREATE TABLE t (a int)",
    "CREATE UNLOGGED TABLE t (a int)",
    "CREATE TABLE public.pg_temp (a int)",
    'CREATE TABLE "pg_temp_x".t (a int)',
    "CREATE TEMP TABLE t () INHERITS (pub)",
    "CREATE TEMP TABLE p PARTITION OF parent FOR VALUES IN (1)",
    "CREATE TEMP TABLE t (a int DEFAULT own_function())",
    "CREATE TEMP TABLE t (a timestamptz DEFAULT now())",
    "CREATE TEMP TABLE t (a int CHECK (public.allowed(a)))",
    "CREATE TEMP TABLE t (a int GENERATED ALWAYS AS (f(1)) STORED)",
    "CREATE TEMP TABLE t AS SELECT * FROM some_view",
    "SELECT 1 AS a INTO TEMP t",
    "CREATE TEMP VIEW v AS SELECT 1",
    "CREATE TEMP SEQUENCE s OWNED BY pub.id",
    # what copies a relation or a type, and a type that is not PostgreSQL's own (a domain's
    # default or check, a type's input function on a default's literal, run with no care
    # taken before the database's own code: pass 47)
    "CREATE TEMP TABLE t (id serial PRIMARY KEY, v text UNIQUE, LIKE pub INCLUDING ALL)",
    "CREATE TEMP TABLE t (LIKE coded INCLUDING ALL)",
    "CREATE TEMP TABLE t (LIKE some_composite_type)",
    "CREATE TEMP TABLE t OF some_type",
    "CREATE TEMP TABLE t (a ticket DEFAULT 'T-1')",
    'CREATE TABLE pg_temp.t (id int, seen public."seen47")',
    'CREATE TEMP TABLE t (a "Text")',
    "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "DROP TABLE IF EXISTS pg_temp.t",
    "CREATE INDEX ON pg_temp.t (a)",
    "CREATE TEMP TABLE t (a int) USING own_access_method",
]


@pytest.mark.parametrize("sql", TEMPORARY_ONLY)
def test_a_temporary_table_alone_keeps_the_facts_known(sql: str) -> None:
    tree = parse(sql)
    assert tree.temp_only
    # (its connection is still closed after: what the table holds goes with its session)
    assert effect(tree) is Effect.CLOSE
    assert not SchemaWatch.fixed(NOTHING).changed_by(tree)


@pytest.mark.parametrize("sql", NOT_ONLY_TEMPORARY)
def test_anything_more_makes_the_facts_unknown(sql: str) -> None:
    tree = parse(sql)
    assert not tree.temp_only
    assert SchemaWatch.fixed(NOTHING).changed_by(tree)


@pytest.mark.parametrize(
    "facts",
    [dataclasses.replace(NOTHING, event_triggers=True), UNKNOWN],
    ids=["event-trigger", "unknown"],
)
def test_an_event_trigger_or_unknown_facts_count_every_ddl(facts: SchemaCode) -> None:
    # An event trigger runs code of the database's own on the CREATE TABLE, which may change
    # anything; while the facts are unknown, one may have been made meanwhile.
    assert SchemaWatch.fixed(facts).changed_by(parse("CREATE TEMP TABLE t (a int)"))
