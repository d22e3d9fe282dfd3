"""A script's statements as PostgreSQL's parser reads them, and how the script has to run.

Decided from each statement's parse tree (app/sql/tree.py), never from the SQL's words:

- A statement that begins or ends a transaction (BEGIN, START TRANSACTION, COMMIT, END,
  ROLLBACK, PREPARE TRANSACTION...) is refused in every file: mirrorpool runs each file in a
  transaction of its own, together with its history row, so that a failure leaves nothing
  behind. (Savepoints stay inside that transaction and are allowed.)
- A statement PostgreSQL refuses inside a transaction block (CREATE/DROP INDEX CONCURRENTLY,
  REINDEX CONCURRENTLY, VACUUM, CREATE DATABASE, ALTER SYSTEM...) makes a file that holds it
  alone run outside a transaction, as Flyway does; alongside other statements it is refused.
- A file with a no-transaction directive must hold exactly one statement.

Plans check every file before the first one runs, so an apply stops before it starts rather
than half-way.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from app.errors import DatabaseError, InvalidSQL
from app.migrations.files import Script
from app.sql.refusals import ends_transaction, statement_verb
from app.sql.tree import Tree, parse_all, statement_starts


@dataclass(frozen=True)
class Statement:
    """One statement of a script: its tree, its text (up to the next statement) and where
    it starts (a character offset into the script, and the file's line)."""

    tree: Tree
    sql: str
    start: int
    line: int


@dataclass(frozen=True)
class Runnable:
    """A script's statements and how they run: in one transaction with the history row, or
    outside any (`outside` says why: the file's directive, or the statement that needs it)."""

    statements: list[Statement]
    outside: str | None

    @property
    def transactional(self) -> bool:
        """Whether the script runs inside a transaction."""
        return self.outside is None


@lru_cache(maxsize=4096)
def runnable(script: Script) -> Runnable:
    """How a script runs (kept per script, so per file version); InvalidSQL naming the file
    and the line when it cannot run as it is."""
    statements = _statements(script)
    for statement in statements:
        if ends_transaction(statement.tree):
            verb = statement_verb(statement.tree)
            raise _refusal(
                script,
                statement,
                f"{verb} is not allowed in a migration file: mirrorpool already runs each "
                "file in a transaction of its own, with its history row, so that a failure "
                f"leaves nothing behind; remove the {verb}",
            )
    if script.no_transaction is not None:
        if len(statements) > 1:
            raise _refusal(
                script,
                statements[1],
                f"`{script.no_transaction}` runs the file outside a transaction, so it must "
                f"hold exactly one statement; it holds {len(statements)} (put each in a file "
                "of its own)",
            )
        return Runnable(statements, script.no_transaction)
    refused = [s for s in statements if s.tree.no_transaction]
    if refused and len(statements) == 1:
        return Runnable(statements, refused[0].tree.no_transaction)
    if refused:
        what = refused[0].tree.no_transaction
        raise _refusal(
            script,
            refused[0],
            f"{what} cannot run inside a transaction block, and this file holds other "
            f"statements too; move the {what} to a file of its own, which then runs outside "
            "a transaction",
            sqlstate="25001",
        )
    return Runnable(statements, None)


def _refusal(script: Script, statement: Statement, why: str, **extra: str) -> InvalidSQL:
    return InvalidSQL(
        f"{script.file}:{statement.line}: {why}", file=script.file, line=statement.line, **extra
    )


def _statements(script: Script) -> list[Statement]:
    """The script's statements; a syntax error names the file and the line."""
    sql = script.sql
    try:
        trees = parse_all(sql)
        starts = statement_starts(sql)
    except (InvalidSQL, DatabaseError) as exc:
        extra = dict(exc.extra)
        if isinstance(exc, DatabaseError):
            extra["sqlstate"] = exc.sqlstate
        database = extra.get("database")
        position = database.get("position") if isinstance(database, dict) else None
        where = script.file
        if isinstance(position, int):
            extra["line"] = script.line_of(position - 1)
            where += f":{extra['line']}"
        raise InvalidSQL(f"{where}: {exc.detail}", file=script.file, **extra) from None
    if len(starts) != len(trees):  # both come from the same parser; never seen apart
        raise InvalidSQL(f"{script.file}: the parser split the file in two different ways")
    ends = [*starts[1:], len(sql)] if starts else []
    return [
        Statement(tree, sql[start:end], start, script.line_of(start))
        for tree, start, end in zip(trees, starts, ends, strict=True)
    ]
