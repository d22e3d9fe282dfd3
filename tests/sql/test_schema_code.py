"""The catalog's account of code that runs out of the tree's sight (app/sql/schema_code.py),
read from a real server: views, rules, policies, defaults, checks, domains, index
expressions and triggers that run code that is not clean, and the database's own function
names; a serial column or a view of plain tables is not such code."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest

from app.devdb import OWNER, SERVICE, LocalPair
from app.sql import schema_code, schema_queries, schema_watch
from app.sql.tree import parse
from tests.conftest import as_owner

OBJECTS = [
    "CREATE SCHEMA sc",
    "CREATE FUNCTION sc.claim(id bigint) RETURNS bool LANGUAGE sql"
    " AS $$ SELECT pg_try_advisory_lock(id) $$",
    "CREATE FUNCTION sc.stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    "CREATE FUNCTION sc.upper(t text, remember bool) RETURNS text LANGUAGE sql AS $$ SELECT t $$",
    "CREATE TABLE sc.plain (id serial PRIMARY KEY, name text DEFAULT lower('X'))",
    "CREATE VIEW sc.plain_view AS SELECT id, lower(name) FROM sc.plain",
    "CREATE VIEW sc.claiming AS SELECT id, sc.claim(id) FROM sc.plain",
    "CREATE VIEW sc.claiming_again AS SELECT * FROM sc.claiming",
    "CREATE VIEW sc.locking AS SELECT pg_try_advisory_lock(1) AS l",  # a catalog function, unclean
    "CREATE TABLE sc.defaulted (id int, claimed bool DEFAULT sc.claim(7))",
    "CREATE TABLE sc.checked (id bigint CHECK (sc.claim(id)))",
    "CREATE DOMAIN sc.claimed_id AS bigint CHECK (sc.claim(VALUE))",
    "CREATE TABLE sc.domained (id sc.claimed_id)",
    "CREATE TABLE sc.indexed (id bigint)",
    "CREATE FUNCTION sc.same(id bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$ SELECT id $$",
    "CREATE INDEX ON sc.indexed (sc.same(id))",
    "CREATE TABLE sc.triggered (id int)",
    "CREATE TRIGGER stamp BEFORE INSERT ON sc.triggered FOR EACH ROW EXECUTE FUNCTION sc.stamp()",
    "CREATE TABLE sc.policed (id bigint)",
    "ALTER TABLE sc.policed ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY p ON sc.policed USING (sc.claim(id))",
    "CREATE TABLE sc.ruled (id int)",
    "CREATE RULE r AS ON INSERT TO sc.ruled DO ALSO SELECT sc.claim(NEW.id)",
    # a domain's default runs when a row is written without the column (not when read)
    "CREATE DOMAIN sc.stamp_id AS bigint DEFAULT sc.same(7)",
    "CREATE TABLE sc.stamped (id int, s sc.stamp_id)",
    "CREATE TYPE sc.stamped_pair AS (a sc.stamp_id, b int)",
    "CREATE TABLE sc.stamped_nested (p sc.stamped_pair, q sc.stamp_id[])",
    "CREATE DOMAIN sc.now_id AS timestamptz DEFAULT now()",
    "CREATE TABLE sc.timed (t sc.now_id)",
    # an operator of the database's own, in a domain's default and check, a partition key
    "CREATE FUNCTION sc.plus(a bigint, b bigint) RETURNS bigint LANGUAGE sql IMMUTABLE"
    " AS $$ SELECT a + b $$",
    "CREATE OPERATOR sc.#+# (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = sc.plus)",
    "CREATE DOMAIN sc.op_default AS bigint DEFAULT 1 OPERATOR(sc.#+#) 2",
    "CREATE TABLE sc.op_defaulted (v sc.op_default)",
    "CREATE DOMAIN sc.op_checked AS bigint CHECK ((VALUE OPERATOR(sc.#+#) 1) > 0)",
    "CREATE TABLE sc.op_checked_t (v sc.op_checked)",
    "CREATE TABLE sc.op_keyed (n bigint) PARTITION BY LIST ((n OPERATOR(sc.#+#) 1))",
    "CREATE TABLE sc.op_keyed_0 PARTITION OF sc.op_keyed FOR VALUES IN (0)",
    # partition keys of own code, one level down; a default on a partition's column only
    "CREATE TABLE sc.routed (n bigint, m bigint) PARTITION BY RANGE (n)",
    "CREATE TABLE sc.routed_low PARTITION OF sc.routed FOR VALUES FROM (0) TO (10)"
    " PARTITION BY LIST (sc.same(m))",
    "CREATE TABLE sc.routed_low_0 PARTITION OF sc.routed_low FOR VALUES IN (0)",
    "CREATE TABLE sc.routed_high PARTITION OF sc.routed FOR VALUES FROM (10) TO (20)",
    "CREATE TABLE sc.parted (n bigint, claimed bool) PARTITION BY RANGE (n)",
    "CREATE TABLE sc.parted_one PARTITION OF sc.parted (claimed DEFAULT sc.claim(1))"
    " FOR VALUES FROM (0) TO (10)",
    "CREATE TABLE sc.parted_plain (n bigint) PARTITION BY LIST ((n % 2))",
    "CREATE TABLE sc.parted_plain_0 PARTITION OF sc.parted_plain FOR VALUES IN (0)",
    # a table whose only tie to anything of the database's own is a kind of object no
    # reading names: its access method (the superuser's, with the catalog's heap handler)
    "CREATE TABLE sc.am_table (x int) USING heap21",
    # stored code that draws from random() and does nothing else
    "CREATE VIEW sc.drawn AS SELECT random() AS r",
    "CREATE VIEW sc.drawn_again AS SELECT r FROM sc.drawn",
    "CREATE TABLE sc.coupons (id int, code float8 DEFAULT random())",
]


@pytest.fixture(scope="module")
def facts(pair: LocalPair) -> Iterator[schema_code.SchemaCode]:
    name = f"db_{uuid.uuid4().hex[:12]}"
    with pair.primary.connect() as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {OWNER}")
    with pair.primary.connect(name) as conn:
        conn.execute("CREATE ACCESS METHOD heap21 TYPE TABLE HANDLER heap_tableam_handler")
    try:
        as_owner(pair, *OBJECTS, dbname=name)
        yield _read(pair, name)
    finally:
        with pair.primary.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _read(pair: LocalPair, dbname: str) -> schema_code.SchemaCode:
    async def go() -> schema_code.SchemaCode:
        dsn = pair.primary.dsn(dbname, user=SERVICE)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:

            async def ask(query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
                cur = await conn.execute(query, params)
                return await cur.fetchall()

            facts, _ = await schema_code.read(ask)
            return facts

    return asyncio.run(go())


def test_relations_whose_reading_runs_code(facts: schema_code.SchemaCode) -> None:
    assert {"claiming", "claiming_again", "locking", "policed"} <= facts.read_coded
    assert not {"plain", "plain_view", "defaulted", "triggered"} & facts.read_coded


def test_relations_whose_writing_runs_code(facts: schema_code.SchemaCode) -> None:
    coded = {"defaulted", "checked", "domained", "indexed", "triggered", "policed", "ruled"}
    assert coded <= facts.write_coded
    # a serial column (nextval), a catalog default and a view of plain tables run nothing
    assert not {"plain", "plain_view"} & facts.write_coded


def test_domain_defaults_and_partition_keys(facts: schema_code.SchemaCode) -> None:
    # a domain's default of own code (a function or an operator), also held in a composite
    # or an array column (counted though PostgreSQL gives those no default), and a domain
    # check by an own operator
    written = {"stamped", "stamped_nested", "op_defaulted", "op_checked_t"}
    assert written <= facts.write_coded
    # reading runs no default (a check of the domain's own runs on casts: read too)
    assert not {"stamped", "stamped_nested", "op_defaulted"} & facts.read_coded
    assert "op_checked_t" in facts.read_coded
    # a partition key of own code counts for its partition tree, and a parent is written
    # through its partitions (a default on one partition's column only)
    keyed = {"op_keyed", "op_keyed_0", "routed", "routed_low", "routed_low_0"}
    assert keyed | {"parted", "parted_one"} <= facts.write_coded
    # a catalog default, a partition key of catalog code, a partition with no own code
    assert not {"timed", "parted_plain", "parted_plain_0", "routed_high"} & facts.write_coded


def test_what_depends_on_an_object_no_reading_names_counts(
    facts: schema_code.SchemaCode,
) -> None:
    """Default closed: any object of the database's own that a relation depends on, other
    than those the readings follow (relations, types, constraints...), makes it code."""
    assert "am_table" in facts.read_coded
    assert "am_table" in facts.write_coded


def test_the_database_s_own_lock_code(facts: schema_code.SchemaCode) -> None:
    """app/sql/lock_code.py: sc.claim locks the one value it is given."""
    locks = facts.locks
    assert locks.found == {"claim"}
    assert not locks.many
    # stored code that calls it on a row's value: a view over a table and a view over that
    # view, a policy and a check (read and written), a rule on NEW's value (written)
    assert {"claiming", "claiming_again", "policed", "checked"} <= locks.read
    assert {"policed", "checked", "ruled"} <= locks.written
    # on one value: a default of claim(7), a view of pg_try_advisory_lock(1), a partition's
    # default of claim(1); code that locks nothing
    steady = {"defaulted", "locking", "parted_one", "parted", "plain_view", "indexed"}
    assert not steady & (locks.read | locks.written)


def test_own_function_names(facts: schema_code.SchemaCode) -> None:
    assert {"claim", "stamp", "upper", "same"} <= facts.own_functions
    assert "lower" not in facts.own_functions


@pytest.mark.parametrize(
    ("sql", "unseen"),
    [
        ("SELECT * FROM sc.plain WHERE id = $1", False),
        ("SELECT * FROM plain_view", False),
        ("INSERT INTO sc.plain (name) VALUES ('a')", False),
        ("SELECT lower('a')", False),
        # an own function named upper exists: an unqualified upper() may reach it
        ("SELECT upper('a')", True),
        ("SELECT * FROM claiming", True),
        ('SELECT * FROM "sc"."claiming_again"', True),
        ("SELECT * FROM sc.defaulted", False),  # reading runs nothing
        ("INSERT INTO sc.defaulted (id) VALUES (1)", True),
        ("WITH x AS (INSERT INTO triggered VALUES (1) RETURNING id) SELECT * FROM x", True),
        ("SELECT p.claim FROM sc.plain p", True),
        ("SELECT (1::bigint).claim", True),
        ("SELECT upper('a', true)", True),
        ("SELECT pg_catalog.upper('a')", False),
        ("SELECT * FROM policed", True),
    ],
)
def test_which_statements_run_unseen_code(
    facts: schema_code.SchemaCode, sql: str, unseen: bool
) -> None:
    assert facts.runs_unseen_code(parse(sql)) is unseen


def test_until_the_catalog_is_read_anything_doubtful_counts() -> None:
    unknown = schema_code.UNKNOWN
    assert unknown.runs_unseen_code(parse("SELECT * FROM t"))
    assert unknown.runs_unseen_code(parse("SELECT lower('a')"))
    assert not unknown.runs_unseen_code(parse("SELECT 1"))


def test_the_watch_reads_again_only_after_a_change(pair: LocalPair) -> None:
    name = f"db_{uuid.uuid4().hex[:12]}"
    with pair.primary.connect() as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {OWNER}")
    try:
        as_owner(pair, "CREATE TABLE quiet (id int)", dbname=name)

        async def go() -> None:
            dsn = pair.primary.dsn(name, user=SERVICE)
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                asked: list[str] = []

                async def ask(query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
                    asked.append(query)
                    cur = await conn.execute(query, params)
                    return await cur.fetchall()

                watch = schema_watch.SchemaWatch(ask, refresh_s=60)
                assert not watch.current.known
                assert await watch.read_now()
                assert watch.current.known and "quiet" not in watch.current.write_coded
                asked.clear()
                assert await watch.read_now()
                assert asked == [schema_watch.FINGERPRINT_SQL]  # unchanged: nothing more read
                as_owner(
                    pair,
                    "CREATE FUNCTION noisy() RETURNS trigger LANGUAGE plpgsql"
                    " AS $$ BEGIN RETURN NEW; END $$",
                    "CREATE TRIGGER noisy BEFORE INSERT ON quiet"
                    " FOR EACH ROW EXECUTE FUNCTION noisy()",
                    dbname=name,
                )
                watch.changed()  # a schema change through mirrorpool: unknown until read
                assert not watch.current.known
                assert watch.current.runs_unseen_code(parse("INSERT INTO quiet VALUES (1)"))
                assert await watch.read_now()
                assert "quiet" in watch.current.write_coded
                assert "noisy" in watch.current.own_functions

        asyncio.run(go())
    finally:
        with pair.primary.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_locked_table_counts_as_code_and_holds_up_no_reading(pair: LocalPair) -> None:
    # Printing a default or a view back takes a lock on the relations it names: with one of
    # them held in ACCESS EXCLUSIVE mode by another session, the reading does not wait for
    # it (and fail at its lock timeout, leaving the old facts standing) but counts what names
    # that relation as code, and reads everything else as usual.
    name = f"db_{uuid.uuid4().hex[:12]}"
    with pair.primary.connect() as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {OWNER}")
    try:
        as_owner(
            pair,
            "CREATE TABLE held (id int DEFAULT 1 + 1)",
            "CREATE VIEW over_held AS SELECT id FROM held",
            "CREATE TABLE free (id int DEFAULT 3)",
            "CREATE VIEW over_free AS SELECT id FROM free",
            "CREATE TABLE parted (n int) PARTITION BY LIST ((n % 2))",
            "CREATE TABLE parted_odd PARTITION OF parted FOR VALUES IN (1)",
            dbname=name,
        )
        with psycopg.connect(pair.primary.dsn(name, user=OWNER)) as locker:
            locker.execute("LOCK TABLE held, parted IN ACCESS EXCLUSIVE MODE")  # its transaction

            async def go() -> tuple[schema_code.SchemaCode | None, bool]:
                dsn = pair.primary.dsn(name, user=SERVICE)
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute("SET lock_timeout = '200ms'")

                    async def ask(query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
                        cur = await conn.execute(query, params)
                        return await cur.fetchall()

                    watch = schema_watch.SchemaWatch(ask, refresh_s=60)
                    since = asyncio.get_running_loop().time()
                    read = await watch.read_now()
                    # A statement that had ended before this reading began is judged by it.
                    return await watch.facts_since(since, timeout=1), read

            facts, read = asyncio.run(go())
        assert read and facts is not None
        assert {"held", "over_held", "parted", "parted_odd"} <= facts.write_coded | facts.read_coded
        assert "over_held" in facts.read_coded
        assert not {"free", "over_free"} & (facts.write_coded | facts.read_coded)
    finally:
        with pair.primary.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_stored_code_that_only_draws_random_is_not_counted_as_code(
    facts: schema_code.SchemaCode,
) -> None:
    # its statements are reseeded and kept out of the lanes, but keep their connection
    assert {"drawn", "drawn_again"} <= facts.read_random
    assert "coupons" in facts.write_random and "coupons" not in facts.read_random
    coded = facts.read_coded | facts.write_coded
    assert not {"drawn", "drawn_again", "coupons"} & coded


def test_the_fingerprint_runs_no_cast_a_superuser_can_add(pair: LocalPair, database: str) -> None:
    """Every catalog type without a cast to text is given one by a superuser, with a trap of
    the database's own: the fingerprint (run every second, on a pool connection) reaches
    none of them, and says the catalog is altered, so the rest of the reading closes its
    connections and every statement counts as running code."""
    with pair.primary.connect(database) as conn:
        conn.execute(
            """
            DO $$
            DECLARE t regtype; n int := 0;
            BEGIN
              FOR t IN SELECT ty.oid FROM pg_type ty
                       WHERE ty.typnamespace = 11 AND ty.typtype = 'b' AND ty.typisdefined
                         AND ty.typcategory <> 'A' AND ty.typname NOT LIKE 'pg\\_%'
                         AND NOT EXISTS (SELECT FROM pg_cast c WHERE c.castsource = ty.oid
                                         AND c.casttarget = 'text'::regtype)
              LOOP
                BEGIN
                  EXECUTE format('CREATE FUNCTION public.trap_%s(%s) RETURNS text'
                    ' LANGUAGE plpgsql AS $f$ BEGIN PERFORM set_config(''trap.hit'', ''yes'','
                    ' false); RETURN ''x''; END $f$', t::oid, t);
                  EXECUTE format('CREATE CAST (%s AS text) WITH FUNCTION public.trap_%s(%s)'
                    ' AS ASSIGNMENT', t, t::oid, t);
                  n := n + 1;
                EXCEPTION WHEN OTHERS THEN NULL;
                END;
              END LOOP;
              PERFORM set_config('trap.made', format('%s', n), false);
            END $$
            """
        )
        made = conn.execute("SELECT current_setting('trap.made')::int").fetchone()
        assert made is not None and made[0] >= 20  # int2, int4, int8, oid, bool, numeric...
        assert conn.execute("SELECT 42::int8::text").fetchone() == ("x",)  # the trap works
        conn.execute("SELECT set_config('trap.hit', 'no', false)")
        row = conn.execute(schema_queries.FINGERPRINT_SQL).fetchone()
        assert row is not None and row[1] is True
        hit = conn.execute("SELECT current_setting('trap.hit')").fetchone()
        assert hit == ("no",), "the fingerprint ran a cast the superuser added"
