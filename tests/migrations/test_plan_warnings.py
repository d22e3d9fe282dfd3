"""Plan warnings and refusals, read from PostgreSQL's parse tree of each migration file.

Pure unit tests: the files are written to pytest's tmp_path and read by files.py's own loader,
and plans are made from their states with an empty history; no database is involved.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.errors import InvalidSQL
from app.migrations.files import Migration, Script
from app.migrations.files import script as read_script
from app.migrations.folder import MigrationFolder
from app.migrations.history import Entry, History, states
from app.migrations.plan import TableName, plan, warnings_for
from app.migrations.statements import runnable
from app.migrations.versions import Version

DROP_TABLE = "DROP TABLE deletes a table and its data"
DROP_SCHEMA = "DROP SCHEMA deletes a schema and everything in it"
DROP_COLUMN = "DROP COLUMN deletes a column and its data"
TRUNCATE = "TRUNCATE deletes every row"
TYPE_CHANGE = "changing a column's type rewrites the table under an exclusive lock"
SET_NOT_NULL = "SET NOT NULL scans the whole table under an exclusive lock"
RENAME = "RENAME breaks clients that use the old name"
CONSTRAINT = "a constraint added without NOT VALID scans the table while holding a lock"
REWRITE = "rewrites the table under an exclusive lock"
LOCK_TABLE = "LOCK TABLE blocks traffic until the transaction ends"
REINDEX = "REINDEX without CONCURRENTLY blocks writes"


def index_warning(table: str) -> str:
    return (
        f"CREATE INDEX on {table} without CONCURRENTLY blocks writes to the table while it "
        "builds (put CREATE INDEX CONCURRENTLY in a file of its own)"
    )


def script(tmp_path: Path, sql: str, name: str = "0001_m.up.sql") -> Script:
    """A migration file as files.py reads it (its `-- mirrorpool:` header included)."""
    return read_script(tmp_path / name, name, sql)


def discover(folder: Path) -> list[Migration]:
    """The folder's migrations, as a run reads them."""
    return MigrationFolder(folder).read().migrations


NONE = History(exists=False)


def v(text: str) -> Version:
    return Version.parse(text)


def applied(migration: Migration) -> History:
    """A history in which `migration` is applied."""
    assert migration.version is not None
    entry = Entry(
        migration.version, migration.name, migration.up.checksum, datetime.now(UTC), "cli:me", 1,
        "applied",
    )  # fmt: skip
    return History(True, {migration.version: entry})


def warnings(tmp_path: Path, sql: str, created: set[TableName] | None = None) -> list[str]:
    return warnings_for(script(tmp_path, sql), set() if created is None else created)


def refusal(tmp_path: Path, sql: str, name: str = "0001_m.up.sql") -> InvalidSQL:
    with pytest.raises(InvalidSQL) as caught:
        warnings_for(script(tmp_path, sql, name), set())
    return caught.value


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("DROP TABLE users;", [DROP_TABLE]),
        ('drop table if exists app."Order Lines", other cascade;', [DROP_TABLE]),
        ("DROP SCHEMA reporting CASCADE;", [DROP_SCHEMA]),
        ('DROP SCHEMA IF EXISTS "Old";', [DROP_SCHEMA]),
        ("ALTER TABLE users DROP COLUMN email;", [DROP_COLUMN]),
        ('alter table only app.users drop "E-mail" restrict;', [DROP_COLUMN]),
        ("TRUNCATE users;", [TRUNCATE]),
        ('truncate table only app."Users", orders restart identity;', [TRUNCATE]),
        ("ALTER TABLE users ALTER COLUMN id TYPE bigint;", [TYPE_CHANGE]),
        (
            'ALTER TABLE app.users ALTER "Big Col" SET DATA TYPE text USING "Big Col"::text;',
            [TYPE_CHANGE],
        ),
        ("ALTER TABLE users ALTER COLUMN email SET NOT NULL;", [SET_NOT_NULL]),
        ('alter table "Users" alter "E mail" set not null;', [SET_NOT_NULL]),
        ("ALTER TABLE a RENAME TO b;", [RENAME]),
        ("ALTER TABLE a RENAME COLUMN x TO y;", [RENAME]),
        ("ALTER TABLE app.a RENAME x TO y;", [RENAME]),
        ("ALTER INDEX a_idx RENAME TO b_idx;", [RENAME]),
        ("ALTER TYPE mood RENAME VALUE 'sad' TO 'blue';", [RENAME]),
        ("ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users;", [CONSTRAINT]),
        (
            'ALTER TABLE "Orders" ADD CONSTRAINT "Fk" FOREIGN KEY (u) REFERENCES app.users (id);',
            [CONSTRAINT],
        ),
        ("ALTER TABLE orders ADD CONSTRAINT positive CHECK (total > 0);", [CONSTRAINT]),
        ("alter table orders add check (total > 0);", [CONSTRAINT]),
        # VACUUM runs only outside a transaction block.
        ("-- mirrorpool: no-transaction\nVACUUM FULL users;", [REWRITE]),
        ("-- mirrorpool: no-transaction\nVACUUM (FULL, ANALYZE) app.users;", [REWRITE]),
        ("CLUSTER users USING users_pkey;", [REWRITE]),
        ("LOCK TABLE users IN ACCESS EXCLUSIVE MODE;", [LOCK_TABLE]),
        ("LOCK users;", [LOCK_TABLE]),
        ("REINDEX TABLE users;", [REINDEX]),
        ('reindex index app."Users_pkey";', [REINDEX]),
        ("-- mirrorpool: no-transaction\nREINDEX (CONCURRENTLY off) TABLE users;", [REINDEX]),
        ("CREATE INDEX users_email ON users (email);", [index_warning("users")]),
        (
            'CREATE UNIQUE INDEX IF NOT EXISTS e ON ONLY app."Users" (email);',
            [index_warning('app."Users"')],
        ),
    ],
)
def test_each_dangerous_statement_warns(tmp_path: Path, sql: str, expected: list[str]) -> None:
    assert warnings(tmp_path, sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        # Safe statements that share words with dangerous ones.
        "ALTER TABLE orders ADD CONSTRAINT positive CHECK (total > 0) NOT VALID;",
        "ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users NOT VALID;",
        "ALTER TABLE orders VALIDATE CONSTRAINT positive;",
        "ALTER TABLE orders ADD CONSTRAINT u UNIQUE USING INDEX orders_u;",
        "ALTER TABLE users CLUSTER ON users_pkey;",
        "ALTER TABLE users ALTER COLUMN email DROP NOT NULL;",
        "ALTER TYPE address DROP ATTRIBUTE zip;",
        "ALTER TYPE mood ADD VALUE 'ok';",
        "SELECT 1 AS rename, 2 AS truncate;",
        "CREATE TABLE locks (lock text, reindex int, rename int);",
        # The words in comments and string literals.
        "-- DROP TABLE users; TRUNCATE users\nSELECT 1;",
        "/* LOCK TABLE users; /* nested: VACUUM FULL */ REINDEX */ SELECT 1;",
        "INSERT INTO audit (note) VALUES ('DROP TABLE users; ALTER TABLE a RENAME TO b');",
        "SELECT E'TRUNCATE users\\'s rows', U&'DROP SCHEMA x';",
        "COMMENT ON TABLE users IS 'do not DROP COLUMN email or LOCK TABLE users';",
        # The words in function bodies and DO blocks: they run later, or out of sight.
        "CREATE FUNCTION wipe() RETURNS void LANGUAGE sql AS $$ TRUNCATE users $$;",
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $body$\n"
        "BEGIN\n  DROP TABLE users;\n  EXECUTE 'ALTER TABLE a RENAME TO b';\nEND\n$body$;",
        "DO $$ BEGIN LOCK TABLE users; REINDEX TABLE users; END $$;",
        "CREATE FUNCTION g() RETURNS void LANGUAGE sql AS 'VACUUM FULL users';",
        # CONCURRENTLY, in every spelling (in a no-transaction file of its own).
        "-- mirrorpool: no-transaction\nREINDEX TABLE CONCURRENTLY users;",
        "-- mirrorpool: no-transaction\nREINDEX (CONCURRENTLY) INDEX users_pkey;",
        "-- mirrorpool: no-transaction\nCREATE INDEX CONCURRENTLY u_e ON users (email);",
        "-- mirrorpool: no-transaction\nVACUUM (FULL false, ANALYZE) users;",
        "-- mirrorpool: no-transaction\nVACUUM (FULL 0) users;",
    ],
)
def test_harmless_statements_do_not_warn(tmp_path: Path, sql: str) -> None:
    assert warnings(tmp_path, sql) == []


def test_not_valid_on_one_constraint_does_not_hide_another_without_it(tmp_path: Path) -> None:
    sql = (
        "ALTER TABLE orders ADD CHECK (total > 0);\n"
        "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (u) REFERENCES users NOT VALID;\n"
    )
    assert warnings(tmp_path, sql) == [CONSTRAINT]


def test_warnings_of_a_file_come_once_each_in_a_fixed_order(tmp_path: Path) -> None:
    sql = (
        "LOCK TABLE users;\nTRUNCATE users;\nALTER TABLE users DROP COLUMN a, DROP COLUMN b, "
        "ALTER COLUMN c TYPE text;\nDROP TABLE old;\nTRUNCATE orders;\n"
        "CREATE INDEX ON orders (id);\nCREATE INDEX o2 ON orders (id);\n"
    )
    assert warnings(tmp_path, sql) == [
        DROP_TABLE, DROP_COLUMN, TRUNCATE, TYPE_CHANGE, LOCK_TABLE, index_warning("orders"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE users (id int, email text);\nCREATE INDEX ON users (email);",
        'CREATE TABLE "Users" (x int);\nCREATE INDEX ON "Users" (x);',
        "CREATE TABLE app.users (x int);\nCREATE INDEX i ON app.users (x);",
        "CREATE TABLE users (x int);\nCREATE UNIQUE INDEX i ON public.users (x);",
        "CREATE TABLE app.users (x int);\nCREATE INDEX i ON users (x);",
        "CREATE UNLOGGED TABLE IF NOT EXISTS Users (x int);\ncreate index on USERS (x);",
        "CREATE TEMP TABLE scratch (x int);\nCREATE INDEX ON scratch (x);",
        "CREATE TABLE copy AS SELECT 1 AS x;\nCREATE INDEX ON copy (x);",
        "CREATE MATERIALIZED VIEW totals AS SELECT 1 AS x;\nCREATE INDEX ON totals (x);",
        "SELECT 1 AS x INTO fresh;\nCREATE INDEX ON fresh (x);",
        "CREATE SCHEMA app CREATE TABLE t (x int) CREATE INDEX i ON t (x);",
        "CREATE SCHEMA app CREATE TABLE t (x int);\nCREATE INDEX ON app.t (x);",
    ],
)
def test_create_index_on_a_table_created_earlier_in_the_file_does_not_warn(
    tmp_path: Path, sql: str
) -> None:
    assert warnings(tmp_path, sql) == []


@pytest.mark.parametrize(
    ("sql", "table"),
    [
        # Quoted names are case sensitive: "Users" is not users.
        ('CREATE TABLE users (x int);\nCREATE INDEX ON "Users" (x);', '"Users"'),
        ('CREATE TABLE "Users" (x int);\nCREATE INDEX ON users (x);', "users"),
        # Same name, different schemas.
        ("CREATE TABLE app.users (x int);\nCREATE INDEX ON audit.users (x);", "audit.users"),
        # The index comes before the table: it is built on some other, existing table.
        ("CREATE INDEX ON users (x);\nCREATE TABLE users (x int);", "users"),
        # A table only mentioned, never created.
        ("-- CREATE TABLE users (x int);\nCREATE INDEX ON users (x);", "users"),
        ("SELECT 'CREATE TABLE users';\nCREATE INDEX ON users (x);", "users"),
        ("CREATE VIEW users_v AS SELECT 1 AS x;\nCREATE INDEX ON users (x);", "users"),
        ("CREATE SCHEMA app CREATE TABLE t (x int);\nCREATE INDEX ON other.t (x);", "other.t"),
    ],
)
def test_create_index_on_another_table_warns(tmp_path: Path, sql: str, table: str) -> None:
    assert warnings(tmp_path, sql) == [index_warning(table)]


def test_create_index_on_a_table_created_earlier_in_the_plan_does_not_warn(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_users.up.sql").write_text('CREATE TABLE "Users" (id int, email text);\n')
    (folder / "0002_orders.up.sql").write_text("CREATE TABLE app.orders (id int, user_id int);\n")
    (folder / "0003_indexes.up.sql").write_text(
        'CREATE INDEX ON "Users" (email);\nCREATE INDEX ON app.orders (user_id);\n'
        "CREATE INDEX ON legacy (id);\n"
    )
    steps = plan(states(discover(folder), NONE), None)
    assert [(str(s.version), s.warnings) for s in steps] == [
        ("1", []),
        ("2", []),
        ("3", [index_warning("legacy")]),
    ]


def test_create_index_on_a_table_of_an_applied_version_warns(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_users.up.sql").write_text("CREATE TABLE users (id int, email text);\n")
    (folder / "0002_index.up.sql").write_text("CREATE INDEX ON users (email);\n")
    migrations = discover(folder)
    steps = plan(states(migrations, applied(migrations[0])), None)
    assert [(str(s.version), s.warnings) for s in steps] == [("2", [index_warning("users")])]


@pytest.mark.parametrize(
    ("sql", "statement"),
    [
        ("CREATE INDEX CONCURRENTLY i ON users (email);", "CREATE INDEX CONCURRENTLY"),
        (
            "-- the index, built without blocking writes\n"
            "create unique index concurrently i on t (x);\n-- done\n",
            "CREATE INDEX CONCURRENTLY",
        ),
        ("DROP INDEX CONCURRENTLY users_email;", "DROP INDEX CONCURRENTLY"),
        ("REINDEX TABLE CONCURRENTLY users;", "REINDEX CONCURRENTLY"),
        ("REINDEX (CONCURRENTLY) INDEX users_pkey;", "REINDEX CONCURRENTLY"),
        ("VACUUM users;", "VACUUM"),
        ("VACUUM (ANALYZE) users;", "VACUUM"),
        ("CREATE DATABASE other;", "CREATE DATABASE"),
        ("ALTER SYSTEM SET work_mem = '8MB';", "ALTER SYSTEM"),
    ],
)
def test_a_lone_statement_that_cannot_run_in_a_transaction_runs_outside_one(
    tmp_path: Path, sql: str, statement: str
) -> None:
    found = script(tmp_path, sql, "0003_idx.up.sql")
    assert found.no_transaction is None  # no directive: the tree decides
    assert runnable(found).outside == statement
    assert not runnable(found).transactional


@pytest.mark.parametrize(
    ("sql", "statement", "line"),
    [
        (
            "CREATE TABLE t (x int);\n-- then\ncreate unique index concurrently i on t (x);",
            "CREATE INDEX CONCURRENTLY",
            3,
        ),
        ("SELECT 1;\n\nDROP INDEX CONCURRENTLY users_email;", "DROP INDEX CONCURRENTLY", 3),
        ("REINDEX TABLE CONCURRENTLY users;\nANALYZE users;", "REINDEX CONCURRENTLY", 1),
        ("CREATE TABLE t (x int);\nVACUUM t;", "VACUUM", 2),
        ("CREATE DATABASE other;\nCREATE TABLE t (x int);", "CREATE DATABASE", 1),
        ("SELECT 1;\nALTER SYSTEM SET work_mem = '8MB';", "ALTER SYSTEM", 2),
    ],
)
def test_a_file_mixing_such_a_statement_with_others_is_refused(
    tmp_path: Path, sql: str, statement: str, line: int
) -> None:
    error = refusal(tmp_path, sql, "0003_idx.up.sql")
    assert error.detail == (
        f"0003_idx.up.sql:{line}: {statement} cannot run inside a transaction block, and this "
        f"file holds other statements too; move the {statement} to a file of its own, which "
        "then runs outside a transaction"
    )
    assert error.extra["file"] == "0003_idx.up.sql"
    assert error.extra["line"] == line
    assert error.extra["sqlstate"] == "25001"


@pytest.mark.parametrize(
    ("sql", "verb", "line"),
    [
        ("BEGIN;\nCREATE TABLE a ();\nCOMMIT;\nSELECT 1/0;", "BEGIN", 1),
        ("CREATE TABLE a ();\nCOMMIT;\nSELECT 1/0;", "COMMIT", 2),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE;\nSELECT 1;", "START TRANSACTION", 1),
        ("CREATE TABLE a ();\n\nEND;", "COMMIT", 3),  # END is COMMIT
        ("CREATE TABLE a ();\nROLLBACK;", "ROLLBACK", 2),
        ("CREATE TABLE a ();\nCOMMIT AND CHAIN;", "COMMIT", 2),
        ("CREATE TABLE a ();\nPREPARE TRANSACTION 'x';", "PREPARE TRANSACTION", 2),
        ("-- mirrorpool: no-transaction\nCOMMIT;", "COMMIT", 2),
        ("begin work;\ncreate table a ();", "BEGIN", 1),
    ],
)
def test_transaction_control_in_a_file_is_refused(
    tmp_path: Path, sql: str, verb: str, line: int
) -> None:
    error = refusal(tmp_path, sql, "0004_tx.up.sql")
    assert error.detail == (
        f"0004_tx.up.sql:{line}: {verb} is not allowed in a migration file: mirrorpool already "
        "runs each file in a transaction of its own, with its history row, so that a failure "
        f"leaves nothing behind; remove the {verb}"
    )
    assert error.extra["line"] == line


@pytest.mark.parametrize(
    "sql",
    [
        # Savepoints stay inside the file's transaction.
        "SAVEPOINT s;\nCREATE TABLE a ();\nROLLBACK TO SAVEPOINT s;\nRELEASE SAVEPOINT s;",
        "SAVEPOINT s;\nROLLBACK WORK TO s;",
        # The words, in comments, strings and bodies.
        "-- BEGIN; ... COMMIT;\nCREATE TABLE a (note text DEFAULT 'COMMIT; ROLLBACK');",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ SELECT 1 $$;\n"
        "DO $$ BEGIN PERFORM f(); END $$;",
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;",
    ],
)
def test_savepoints_and_the_words_are_not_transaction_control(tmp_path: Path, sql: str) -> None:
    assert runnable(script(tmp_path, sql)).transactional


def test_the_same_statement_in_a_no_transaction_file_is_planned(tmp_path: Path) -> None:
    sql = "-- mirrorpool: no-transaction\nCREATE INDEX CONCURRENTLY i ON users (email);\n"
    assert warnings(tmp_path, sql) == []
    assert warnings(tmp_path, "-- mirrorpool: no-transaction\nVACUUM FULL users;") == [REWRITE]


@pytest.mark.parametrize(
    "directive",
    ["-- mirrorpool: no-transaction", "-- morph:nontransactional", "--morph: nontransactional"],
)
def test_other_tools_no_transaction_directives_are_read(tmp_path: Path, directive: str) -> None:
    found = script(tmp_path, f"{directive}\nCREATE INDEX i ON users (email);\n")
    assert runnable(found).outside == directive.strip()


def test_the_words_in_a_string_or_a_comment_are_not_refused(tmp_path: Path) -> None:
    sql = (
        "-- once this table is big, CREATE INDEX CONCURRENTLY in a file of its own\n"
        "CREATE TABLE t (x int);\n"
        "COMMENT ON TABLE t IS 'VACUUM; CREATE INDEX CONCURRENTLY i ON t (x)';\n"
    )
    assert warnings(tmp_path, sql) == []
    assert runnable(script(tmp_path, sql)).transactional


def test_refusal_makes_the_plan_fail_before_any_step(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_users.up.sql").write_text("CREATE TABLE users (id int, email text);\n")
    (folder / "0002_idx.up.sql").write_text(
        "ALTER TABLE users ADD COLUMN name text;\nCREATE INDEX CONCURRENTLY e ON users (email);\n"
    )
    with pytest.raises(InvalidSQL, match=r"^0002_idx\.up\.sql:2: CREATE INDEX CONCURRENTLY cannot"):
        plan(states(discover(folder), NONE), None)
    assert [str(s.version) for s in plan(states(discover(folder), NONE), v("1"))] == ["1"]


def test_a_rollback_plan_runs_a_lone_drop_index_concurrently_outside_a_transaction(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_e.up.sql").write_text("CREATE INDEX CONCURRENTLY e ON users (email);\n")
    (folder / "0001_e.down.sql").write_text("DROP INDEX CONCURRENTLY e;\n")
    migrations = discover(folder)
    (step,) = plan(states(migrations, applied(migrations[0])), v("0"))
    assert (step.direction, step.outside, step.as_json()["transaction"]) == (
        "down", "DROP INDEX CONCURRENTLY", False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("sql", "count", "line"),
    [
        ("CREATE INDEX CONCURRENTLY a ON t (x);\nCREATE INDEX CONCURRENTLY b ON t (y);", 2, 3),
        ("CREATE INDEX CONCURRENTLY a ON t (x); SELECT 1; SELECT 2", 3, 2),
    ],
)
def test_a_no_transaction_file_with_several_statements_is_refused(
    tmp_path: Path, sql: str, count: int, line: int
) -> None:
    error = refusal(tmp_path, "-- mirrorpool: no-transaction\n" + sql, "0004_two.up.sql")
    assert error.detail == (
        f"0004_two.up.sql:{line}: `-- mirrorpool: no-transaction` runs the file outside a "
        f"transaction, so it must hold exactly one statement; it holds {count} (put each in a "
        "file of its own)"
    )
    assert error.extra["line"] == line  # where the second statement starts


@pytest.mark.parametrize(
    "sql",
    [
        # Semicolons that end no statement: in strings, identifiers, comments, bodies.
        "CREATE INDEX CONCURRENTLY \"a;b\" ON t ((x || ';'));",
        "CREATE INDEX CONCURRENTLY a ON t (x); -- drop it later; maybe",
        "CREATE INDEX CONCURRENTLY a ON t (x) /* ; */;;\n;",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; SELECT 2; $$;",
    ],
)
def test_a_no_transaction_file_counts_statements_not_semicolons(tmp_path: Path, sql: str) -> None:
    assert warnings(tmp_path, "-- mirrorpool: no-transaction\n" + sql) == []


@pytest.mark.parametrize(
    ("sql", "message", "line"),
    [
        ("CREATE TABLE t (id int);\n\nSELEC oops;\n", 'syntax error at or near "SELEC"', 3),
        ("ALTER TABLE t\n  ADD CONSTRAINT CHECK (x > 0);", 'syntax error at or near "CHECK"', 2),
        ("CREATE TABLE t (id int,);", 'syntax error at or near ")"', 1),
        ("SELECT 'unterminated;\n", "unterminated quoted string at or near \"'unterminated;", 1),
        ("SELECT 'é';\nSELECT 'ü';\nSELEC 1;", 'syntax error at or near "SELEC"', 3),
    ],
)
def test_a_syntax_error_is_invalid_sql_with_postgresqls_message(
    tmp_path: Path, sql: str, message: str, line: int
) -> None:
    error = refusal(tmp_path, sql, "0005_bad.up.sql")
    assert error.detail.startswith(f"0005_bad.up.sql:{line}: {message}")
    assert error.extra["sqlstate"] == "42601"
    assert error.extra["file"] == "0005_bad.up.sql"
    assert error.extra["line"] == line


def test_a_syntax_error_in_a_later_file_fails_the_whole_plan(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_users.up.sql").write_text("CREATE TABLE users (id int);\n")
    (folder / "0002_bad.up.sql").write_text("ALTER TABLE users ADD COLUMN;\n")
    with pytest.raises(InvalidSQL, match=r'^0002_bad\.up\.sql:1: syntax error at or near ";"'):
        plan(states(discover(folder), NONE), None)
