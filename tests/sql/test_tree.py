"""The parse tree's facts and the rules read from them: every spelling PostgreSQL reads as
the same statement gets the same decision (quoted and U& identifiers, schema-qualified
names, comments, nesting), and words in literals, comments or names decide nothing."""

from __future__ import annotations

import pglast.parser
import pytest
from pglast import visitors

from app.errors import DatabaseError, InvalidSQL
from app.sql import refusals, session, text_cache
from app.sql import tree as trees
from app.sql.session import Effect
from app.sql.tree import parse, parse_all, returns_rows


def refused(sql: str, read_only: bool = False) -> str | None:
    return refusals.refusal(parse(sql), read_only)


# Statements every request is refused, in several spellings each.
ALWAYS_REFUSED = [
    "DEALLOCATE ALL",
    "deallocate prepare _mp_0",
    "/* x */ PREPARE _mp_0 (int) AS SELECT $1",
    "EXPLAIN EXECUTE _mp_0 (1)",
    "DISCARD ALL",
    "discard plans",
    "COMMIT",
    "end",
    "ROLLBACK -- TO SAVEPOINT a",
    "START TRANSACTION READ WRITE",
    "PREPARE TRANSACTION 'x'",
    "COMMIT PREPARED 'x'",
    "COPY (SELECT 1) TO STDOUT",
    "copy pg_class from stdin",
    "SELECT pg_terminate_backend(1)",
    'SELECT "pg_terminate_backend"(1)',
    'SELECT U&"pg\\005fterminate\\005fbackend"(1)',
    "SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_stat_activity",
    "SELECT * FROM pg_catalog.pg_terminate_backend(1)",
    "SELECT pg_promote()",
    "SELECT name, statement FROM pg_prepared_statements",
    'SELECT * FROM "pg_catalog"."pg_prepared_statements"',
    "SELECT * FROM pg_prepared_statement()",
    "ALTER ROLE CURRENT_USER PASSWORD 'mine'",
    "ALTER USER mirrorpool SET search_path = evil",
    'alter role "mirrorpool" reset all',
    "ALTER DATABASE app SET default_transaction_read_only = on",
    "ALTER SYSTEM SET work_mem = '1GB'",
    # the database and its schemas: for every later session of every login
    "ALTER DATABASE app CONNECTION LIMIT 0",
    'alter database "app" with allow_connections false',
    "ALTER DATABASE app RENAME TO gone",
    "ALTER DATABASE app OWNER TO mirrorpool",
    "ALTER SCHEMA public RENAME TO p2",
    "CREATE SCHEMA AUTHORIZATION CURRENT_USER",
    'create schema if not exists "mirrorpool"',
    "DROP DATABASE other",
    "CREATE DATABASE other",
    "DROP OWNED BY CURRENT_USER",
    "REASSIGN OWNED BY mirrorpool TO x",
    "ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM PUBLIC",
    # statistics not flushed yet: other requests' counts on a shared connection
    "SELECT n_tup_ins FROM pg_stat_xact_user_tables WHERE relname = 't'",
    'SELECT * FROM "pg_catalog"."pg_stat_xact_all_tables"',
    "SELECT pg_stat_get_xact_tuples_inserted('t'::regclass)",
    'SELECT U&"pg_stat_get_xact_numscans"(c.oid) FROM pg_class c',
    "SELECT (c.oid).pg_stat_get_xact_tuples_updated FROM pg_class AS c",
    # seed: it seeds random() for the session, and no reset undoes it
    "SET LOCAL seed = 0.25",
    'SET "seed" TO 0.5',
    "SELECT set_config('seed', '0.25', true)",
    "SELECT pg_catalog.set_config(U&'se\\0065d', '0', true)",
    "SAVEPOINT mirrorpool_read_only",
    'RELEASE SAVEPOINT "mirrorpool_read_only"',
    # code the tree cannot read, with the login's rights over every key's sessions
    "DO $$ BEGIN EXECUTE 'ALTER ROLE CURRENT_USER PASSWORD ''x'''; END $$",
    "do language plpgsql $x$ begin null; end $x$",
    "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    'CREATE OR REPLACE PROCEDURE "pg_temp".p() LANGUAGE sql AS $$ SELECT 1 $$',
    # a query, a relation or a schema named by a value the tree cannot read
    "SELECT table_to_xml('pg_prepared_statements', true, false, '')",
    "SELECT pg_catalog.table_to_xml_and_xmlschema($1::regclass, true, false, '')",
    "SELECT schema_to_xml('pg_catalog', true, false, '')",
    "SELECT query_to_xml('SELECT 1', true, true, '')",
    "SELECT * FROM ts_stat('SELECT to_tsvector(statement) FROM pg_prepared_statements')",
    # settings the service pins, in every scope and spelling
    "SET LOCAL standard_conforming_strings = off",
    'SET "standard_conforming_strings" TO off',
    "SET LOCAL U&\"bytea\\005foutput\" = 'escape'",
    "SET datestyle = 'German'",
    "SET NAMES 'SQL_ASCII'",
    "SELECT set_config('backslash_quote', 'on', true)",
    "SELECT set_config('IntervalStyle', 'postgres', true)",
    "SET LOCAL standard_conforming_strings TO DEFAULT",
    "RESET bytea_output",
    "SET LOCAL client_connection_check_interval = 0",
    # set_config of a setting the tree cannot name
    "SELECT set_config($1, 'off', true)",
    "SELECT set_config(lower('STANDARD_CONFORMING_STRINGS'), 'off', true)",
    # set_config() in disguise: the view's rule sets the setting for the session
    "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
    'update "pg_catalog"."pg_settings" set setting = 0 where name = $1',
    "WITH x AS (UPDATE pg_settings SET setting = '0' WHERE name = 'x' RETURNING 1) SELECT 1",
    # definitions that call functions named in them, not as calls
    "CREATE OPERATOR pg_temp.### (FUNCTION = pg_terminate_backend, LEFTARG = int, "
    "RIGHTARG = bigint)",
    "CREATE AGGREGATE pg_temp.stop(int) (SFUNC = int4larger, STYPE = int, "
    "FINALFUNC = pg_cancel_backend)",
    "CREATE CAST (int AS text) WITH FUNCTION f(int)",
    "CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW EXECUTE FUNCTION f()",
    "CREATE TYPE pg_temp.r AS RANGE (subtype = int4, subtype_diff = f)",
    # attribute notation: (expr).f and alias.f are calls of f
    "SELECT (pid).pg_terminate_backend FROM pg_stat_activity",
    "SELECT a.pg_cancel_backend FROM (SELECT 1 AS x) AS a",
    "SELECT ('SELECT 1'::text).ts_stat",
    # naming pg_settings in anything but a query
    "CREATE TEMP VIEW s AS SELECT name, setting FROM pg_catalog.pg_settings",
]


@pytest.mark.parametrize("sql", ALWAYS_REFUSED)
def test_statements_that_reach_other_keys_are_refused_in_every_spelling(sql: str) -> None:
    assert refused(sql) is not None


READ_ONLY_REFUSED = [
    # large objects
    "SELECT lo_from_bytea(0, 'x')",
    'SELECT "lo_create"(0)',
    "SELECT pg_catalog.lo_import('/etc/passwd')",
    'SELECT U&"lo\\005fcreat"(-1)',
    "SELECT * FROM lo_create(0)",
    "SELECT (SELECT lo_unlink(1))",
    # advisory locks, notifications
    "SELECT pg_advisory_lock(1)",
    'SELECT "pg_try_advisory_xact_lock"(1)',
    "SELECT pg_notify('a', 'b')",
    "NOTIFY a",
    "LISTEN a",
    "UNLISTEN *",
    # server administration, files, programs
    "SELECT pg_reload_conf()",
    "SELECT pg_catalog.pg_switch_wal()",
    "SELECT pg_create_restore_point('x')",
    "SELECT pg_stat_reset()",
    "SELECT pg_stat_reset_shared('bgwriter')",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT * FROM pg_ls_dir('.')",
    "COPY (SELECT 1) TO PROGRAM 'id'",
    "COPY pg_class TO '/tmp/x'",
    "COPY t FROM PROGRAM 'id'",
    "SELECT dblink_exec('host=x', 'DELETE FROM t')",
    "SELECT * FROM public.dblink('host=x', 'SELECT 1') AS t(x int)",
    "SELECT query_to_xml('SELECT lo_create(0)', true, true, '')",
    "LOAD 'auto_explain'",
    # code the tree cannot read
    "DO $$ BEGIN PERFORM lo_create(0); END $$",
    "do language plpgsql $x$ begin null; end $x$",
    "/* SELECT */ DO $$ BEGIN END $$",
    "CALL refresh_everything()",
    # the session and the access mode
    "SET statement_timeout = 0",
    'SET "search_path" = evil',
    "RESET ALL",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
    "SET LOCAL transaction_read_only = off",
    'SET LOCAL "default_transaction_read_only" TO off',
    "SELECT set_config('statement_timeout', '0', false)",
    "SELECT U&\"set\\005fconfig\"('statement_timeout', '0', false)",
    "SELECT pg_catalog.set_config('search_path', 'evil', 'off')",
    "SELECT set_config('statement_timeout', '0', $1)",
    "SELECT set_config('transaction_read_only', 'off', true)",
    "SELECT set_config(current_setting('x'), '0', true)",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "SELECT setseed(0.5)",
    "SELECT nextval('s')",
]


@pytest.mark.parametrize("sql", READ_ONLY_REFUSED)
def test_what_escapes_a_read_only_transaction_is_refused_to_read_only_requests(
    sql: str,
) -> None:
    assert refused(sql, read_only=True) is not None


READ_ONLY_ALLOWED = [
    "SELECT 1",
    "SELECT lower(v), count(*) FROM pub GROUP BY 1",
    "WITH a AS (SELECT 1) SELECT * FROM a",
    "TABLE pub",
    "VALUES (1), (2)",
    "EXPLAIN SELECT 1",
    "SHOW statement_timeout",
    "SET LOCAL statement_timeout = 100",
    "SELECT set_config('app.tenant', 'a', true)",
    "SELECT set_config('app.tenant', $1, 'on')",
    "SAVEPOINT a",
    "ROLLBACK TO SAVEPOINT a",
    "DECLARE c CURSOR FOR SELECT 1",
    # The words are in literals, comments and names, not in the statement.
    "SELECT 'lo_create(0); DO $$ $$' AS lo_create -- pg_advisory_lock(1)",
    'SELECT "set_config" FROM (SELECT 1 AS "set_config") AS s',
    "SELECT my_schema.lo_report FROM my_schema.reports",
    # What PostgreSQL refuses itself in a READ ONLY transaction (SQLSTATE 25006).
    "INSERT INTO pub VALUES (2, 'x')",
    "CREATE TABLE sneaky (id int)",
]


@pytest.mark.parametrize("sql", READ_ONLY_ALLOWED)
def test_queries_pass_read_only_requests(sql: str) -> None:
    assert refused(sql, read_only=True) is None


@pytest.mark.parametrize(
    ("sql", "effect"),
    [
        ("SELECT v FROM pub WHERE id = $1", Effect.NONE),
        ("SELECT now(), lower('A'), count(*), coalesce(NULL, 1) FROM pub", Effect.NONE),
        ("SELECT extract(year FROM now()), 'x' AT TIME ZONE 'UTC', trim(' a ')", Effect.NONE),
        ("INSERT INTO pub VALUES (1, 'x') RETURNING id", Effect.NONE),
        ("SET LOCAL statement_timeout = 5", Effect.RESET),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Effect.NONE),
        # Plans made under a setting, even a local one, outlive it (a literal's time zone):
        # DISCARD ALL drops them.
        ("SET LOCAL TimeZone = 'Pacific/Kiritimati'", Effect.RESET),
        ("SELECT set_config('app_setting', 'x', true)", Effect.RESET),
        ("SELECT set_config('search_path', 'x', true)", Effect.CLOSE),
        # A custom setting's placeholder outlives every reset: its connection is closed.
        ("SELECT set_config('app.tenant', 'c', true)", Effect.CLOSE),
        ("SET LOCAL app.tenant = 'c'", Effect.CLOSE),
        ("SET LOCAL \"request.jwt.claims\" TO '{}'", Effect.CLOSE),
        ("SELECT pg_advisory_xact_lock(1)", Effect.RESET),  # volatile, not vetted
        ("SET statement_timeout = 0", Effect.RESET),
        ('SET U&"statement\\005ftimeout" = 0', Effect.RESET),
        ("RESET ALL", Effect.RESET),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", Effect.RESET),
        ("SET ROLE someone", Effect.RESET),
        ("SELECT set_config('statement_timeout', '0', false)", Effect.RESET),
        ("SELECT pg_catalog.set_config('statement_timeout', '0', $1)", Effect.RESET),
        ("SELECT pg_advisory_lock(7)", Effect.RESET),
        ('SELECT "pg_catalog"."pg_try_advisory_lock"(7)', Effect.RESET),
        ("CREATE TEMP TABLE pub (id int)", Effect.CLOSE),
        ("CREATE TABLE pg_temp.pub (id int)", Effect.CLOSE),
        ("SELECT 1 AS id INTO pg_temp.pub", Effect.CLOSE),
        ("SELECT 1 AS id INTO TEMPORARY pub", Effect.CLOSE),
        ("CREATE TEMP VIEW pub AS SELECT 1", Effect.CLOSE),
        ("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", Effect.CLOSE),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", Effect.RESET),
        ("LISTEN jobs", Effect.RESET),
        # a function of the database's own may define a custom setting or seed random():
        # only a new backend forgets those
        ("SELECT run_sql('DEALLOCATE ALL')", Effect.CLOSE),
        ("SELECT public.lower('x')", Effect.CLOSE),  # not the catalog's lower
        ("CALL refresh()", Effect.CLOSE),
        ("SELECT lo_create(0)", Effect.RESET),
        ("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$", Effect.CLOSE),
        ("CREATE EXTENSION IF NOT EXISTS pg_trgm", Effect.CLOSE),
        # types, conversions, operators in pg_temp shadow the database's own
        ("CREATE DOMAIN pg_temp.text AS varchar(3)", Effect.CLOSE),
        ('CREATE TYPE "pg_temp"."text" AS ENUM (\'pub\')', Effect.CLOSE),
        ("CREATE TYPE pg_temp.text AS RANGE (subtype = int4)", Effect.CLOSE),
        ("ALTER TYPE mood SET SCHEMA pg_temp", Effect.CLOSE),
        # any other DDL too: what a kind of statement leaves behind is not guessed
        ("CREATE TABLE t (id int)", Effect.RESET),
        ("CREATE CONVERSION c FOR 'UTF8' TO 'LATIN1' FROM utf8_to_iso8859_1", Effect.RESET),
        ("LOAD 'auto_explain'", Effect.CLOSE),
        ("SELECT setseed(0.5)", Effect.CLOSE),
        ("SELECT (0.25::float8).setseed", Effect.CLOSE),
        ("SELECT (4242::bigint).pg_advisory_lock", Effect.RESET),
        ("SELECT u.lower, u.id FROM pub AS u", Effect.NONE),
        ("SELECT 1 AS id INTO pub", Effect.RESET),
        ("SET LOCAL search_path = pg_temp", Effect.CLOSE),
        ("SELECT set_config('search_path', $1, true)", Effect.CLOSE),
    ],
)
def test_what_a_statement_may_leave_in_its_session(sql: str, effect: Effect) -> None:
    assert session.effect(parse(sql)) is effect


@pytest.mark.parametrize(
    ("sql", "pure"),
    [
        ("SELECT v FROM pub WHERE id = $1", True),
        ("SELECT count(*) FROM pub JOIN pub p2 USING (id)", True),
        ("SELECT v FROM pub WHERE id = $1 FOR UPDATE", False),
        ("SELECT v FROM pub FOR KEY SHARE SKIP LOCKED", False),
        ("WITH d AS (DELETE FROM pub RETURNING *) SELECT * FROM d", False),
        ("SELECT * INTO copy_of_pub FROM pub", False),
        ("SELECT nextval('s')", False),
        ("SELECT my_function()", False),
        ("SELECT currval('s')", False),
        ("INSERT INTO pub VALUES (1)", False),
        ("EXPLAIN ANALYZE DELETE FROM pub", False),
    ],
)
def test_only_pure_reads_may_share_a_connection(sql: str, pure: bool) -> None:
    assert session.pure_read(parse(sql)) is pure


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("CREATE INDEX CONCURRENTLY i ON t (a)", "CREATE INDEX CONCURRENTLY"),
        ("create unique index concurrently if not exists i on t (a)", "CREATE INDEX CONCURRENTLY"),
        ("DROP INDEX CONCURRENTLY i", "DROP INDEX CONCURRENTLY"),
        ("REINDEX (CONCURRENTLY) TABLE t", "REINDEX CONCURRENTLY"),
        ("REINDEX TABLE CONCURRENTLY t", "REINDEX CONCURRENTLY"),
        ("VACUUM t", "VACUUM"),
        ("VACUUM (ANALYZE) t", "VACUUM"),
        ("CREATE DATABASE x", "CREATE DATABASE"),
        ("ALTER SYSTEM SET work_mem = '1MB'", "ALTER SYSTEM"),
        ("CLUSTER", "CLUSTER without a table"),
    ],
)
def test_statements_that_cannot_run_in_a_transaction_block(sql: str, why: str) -> None:
    assert parse(sql).no_transaction == why


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX i ON t (a)",
        "REINDEX (CONCURRENTLY false) TABLE t",
        "REINDEX (CONCURRENTLY off) TABLE t",
        "ANALYZE t",
        "CLUSTER t USING i",
        "SELECT 'VACUUM'",
    ],
)
def test_statements_that_can_run_in_a_transaction_block(sql: str) -> None:
    assert parse(sql).no_transaction is None


def test_syntax_errors_carry_postgresqls_message_and_character_position() -> None:
    with pytest.raises(DatabaseError) as caught:
        parse("SELECT 'ééé', 1 FRM t WHERE")
    assert caught.value.sqlstate == "42601"
    assert caught.value.detail == 'syntax error at or near "t"'
    assert caught.value.extra["database"]["position"] == 21


@pytest.mark.parametrize("sql", ["SELECT 1; SELECT 2", "DEALLOCATE ALL; SELECT 1"])
def test_one_statement_only(sql: str) -> None:
    with pytest.raises(InvalidSQL, match="more than one statement"):
        parse(sql)
    assert len(parse_all(sql)) == 2


CORPUS = [
    *ALWAYS_REFUSED,
    *READ_ONLY_REFUSED,
    *READ_ONLY_ALLOWED,
    "CALL p(lo_create(0))",
    "CREATE TABLE t AS SELECT lo_create(0) AS x",
    "SELECT (SELECT f(1) UNION SELECT g(2)) FROM h() AS x(y)",
    "INSERT INTO t SELECT * FROM json_populate_record(NULL::t, $1) ON CONFLICT DO NOTHING",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = lower(s.v)",
    "ALTER ROLE x SET search_path = a",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = x RETURN 1",
    "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO x",
    "SELECT a FROM t WINDOW w AS (PARTITION BY f(a)) ORDER BY g(a) OVER w",
    "SELECT * FROM t TABLESAMPLE bernoulli(f(1))",
    "SELECT xmlserialize(CONTENT f() AS text), json_object('a': g())",
]


@pytest.mark.parametrize("sql", CORPUS)
def test_the_tree_sees_every_node_pglasts_own_ast_has(sql: str) -> None:
    # The facts come from pglast's JSON tree, where a node is typed by its key or by its
    # field; pglast's Python AST, walked by its own visitor, is the reference.
    expected: set[str] = set()
    for _, node in visitors.Visitor().iterate(pglast.parser.parse_sql(sql)):
        expected.add(type(node).__name__)
    found = parse(sql).kinds | {"RawStmt"}
    assert expected - found == set()


@pytest.mark.parametrize(
    ("sql", "rows"),
    [
        ("SELECT 1", True),
        ("/* INSERT */ select 1 union select 2", True),
        ("VALUES (1)", True),
        ("TABLE t", True),
        ("WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d", True),
        ("INSERT INTO t VALUES (1) RETURNING *", True),
        ("UPDATE t SET a = 1 RETURNING a", True),
        ("SHOW TimeZone", True),
        ("EXPLAIN SELECT 1", True),
        ("FETCH 1 FROM c", True),
        ("SELECT 1 INTO t2", False),
        ("INSERT INTO t VALUES (1)", False),
        ("WITH s AS (SELECT 1 AS a) INSERT INTO t SELECT a FROM s", False),
        ("DELETE FROM t", False),
        ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", False),
        ("SET search_path = public", False),
        ("CREATE TABLE t3 (a int)", False),
        ("MOVE 1 FROM c", False),
        ("CALL p()", None),
    ],
)
def test_returns_rows_reads_the_statement_not_its_words(sql: str, rows: bool | None) -> None:
    assert returns_rows(parse(sql)) is rows


@pytest.mark.parametrize(
    ("sql", "operators"),
    [
        ("SELECT 1 FROM t WHERE v BETWEEN 1 AND 2", {">=", "<="}),
        ("SELECT 1 FROM t WHERE v BETWEEN SYMMETRIC 2 AND 1", {">=", "<="}),
        ("SELECT 1 FROM t WHERE v NOT BETWEEN 1 AND 2", {"<", ">"}),
        ("SELECT 1 FROM t WHERE v NOT BETWEEN SYMMETRIC 2 AND 1", {"<", ">"}),
        ("SELECT CASE v WHEN 1 THEN 'one' END FROM t", {"="}),
        ("SELECT 1 FROM t WHERE v IN (SELECT 1)", {"="}),
        ("SELECT 1 FROM t WHERE v NOT IN (SELECT 1)", {"="}),
        ("SELECT 1 FROM t WHERE v <<@>> ANY (SELECT 1)", {"<<@>>"}),
        ("SELECT 1 FROM t WHERE v OPERATOR(s.<<@>>) ALL (SELECT 1)", {"<<@>>"}),
        ("SELECT 1 FROM t WHERE (v, w) = (SELECT 1, 2)", {"="}),
        ("SELECT 1 FROM t a JOIN t b USING (v)", {"="}),
        ("SELECT 1 FROM t a NATURAL LEFT JOIN t b", {"="}),
        ("SELECT 1 FROM t WHERE v IN (1, 2)", {"="}),
        ("SELECT 1 FROM t WHERE v NOT IN (1, 2)", {"<>"}),
        ("SELECT 1 FROM t WHERE v LIKE 'a%' OR v ILIKE 'b%'", {"~~", "~~*"}),
        ("SELECT 1 FROM t WHERE v SIMILAR TO 'a%'", {"~"}),
        ("SELECT NULLIF(v, 1), v IS DISTINCT FROM 2 FROM t", {"="}),
        ("SELECT 1 FROM t WHERE v = ANY (ARRAY[1])", {"="}),
        ("SELECT v FROM t ORDER BY v USING <<@>>", {"<<@>>"}),
    ],
)
def test_operators_the_analyser_looks_up_by_name_are_named(sql: str, operators: set[str]) -> None:
    # (what app/sql/schema_code.py matches against the database's own operators)
    assert operators <= parse(sql).own_call_names


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT CASE WHEN v THEN 1 END FROM t",
        "SELECT 1 FROM t a JOIN t b ON true",
        "SELECT 1 FROM t WHERE EXISTS (SELECT 1)",
        "SELECT DISTINCT v FROM t GROUP BY v ORDER BY v",  # operator classes: a superuser's
    ],
)
def test_no_operator_where_none_is_looked_up_by_name(sql: str) -> None:
    assert not {"=", "<>", "<", ">", "<=", ">="} & parse(sql).own_call_names


def test_the_parse_cache_keeps_trees_within_the_names_they_hold() -> None:
    # A point select is parsed once; a text of many distinct calls (well under the cached
    # length) is parsed anew each time rather than kept with its facts.
    point = "SELECT v FROM pub WHERE id = $1 -- cache15"
    assert parse(point) is parse(point)
    many = "SELECT " + ",".join(f"cache15_{i}()" for i in range(1000))
    assert len(many) <= text_cache.CACHEABLE_LENGTH
    assert parse(many).weight > text_cache.CACHED_NAMES
    assert parse(many) is not parse(many)
    # Past its budget the cache lets the oldest go: what it holds stays within it.
    for i in range(200):
        parse("SELECT " + ",".join(f"cache15_{i}_{k}()" for k in range(500)))
    kept, held = trees._trees.held()
    assert kept <= text_cache.CACHE_SIZE and held <= text_cache.CACHE_NAMES


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_advisory_xact_lock($1)",
        "SELECT pg_advisory_xact_lock(hashtext('job:' || $1))",
        "SELECT pg_catalog.pg_try_advisory_xact_lock(1, 2) FROM jobs WHERE id = $1",
        "SELECT lo_unlink($1::oid)",
        "SELECT pg_advisory_unlock_all() FROM generate_series(1, 10)",
    ],
)
def test_a_lock_on_one_value_a_statement_runs(sql: str) -> None:
    assert refused(sql) is None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(pg_advisory_xact_lock(i)) FROM generate_series(1, 30000) i",
        'SELECT "pg_advisory_xact_lock"(id) FROM jobs',
        'SELECT count(U&"lo\\005funlink"(oid)) FROM pg_largeobject_metadata',
        "SELECT count(lo_unlink(lo_create(0))) FROM generate_series(1, 30000)",
        "SELECT count((i).pg_advisory_xact_lock) FROM generate_series(1::int8, 30000) i",
        "SELECT pg_advisory_xact_lock(generate_series(1, 30000))",
        "SELECT pg_advisory_xact_lock((SELECT max(id) FROM jobs))",
        "SELECT pg_advisory_xact_lock(row_number() OVER ())",
        "SELECT pg_advisory_xact_lock(hashtext(random()::text)) FROM generate_series(1, 9)",
        "SELECT " + ", ".join(f"pg_advisory_xact_lock({i})" for i in range(5)),
    ],
)
def test_locks_on_every_rows_value_are_refused_in_every_spelling(sql: str) -> None:
    found = refused(sql)
    assert found is not None and "taken at most 4 to a statement" in found
