"""Where a migration failed: the file, the line, and PostgreSQL's context.

Steps run statement by statement, so the failing statement is known. Its own error carries a
position, turned into the file's line. An error raised while a function or a DO block runs
has no position but a PL/pgSQL context (`PL/pgSQL function inline_code_block line 4 at RAISE`,
innermost first) whose line counts from the start of the body: the parse tree says where the
body starts in the file when the DO block, or the CREATE FUNCTION, is in the same script.
"""

from __future__ import annotations

import re

import psycopg

from app.errors import DatabaseError, MirrorpoolError
from app.migrations.plan import Step
from app.migrations.statements import Statement
from app.sql.errors import database_error

# One frame of PostgreSQL's error context (its message, not SQL).
_FRAME = re.compile(r"PL/pgSQL function (?P<function>.+?) line (?P<line>\d+) at ")
_DO_BLOCK = "inline_code_block"


def failure(
    exc: psycopg.Error, node: str, step: Step, statements: list[Statement], index: int
) -> MirrorpoolError:
    """The error to report for statement `index` of the step's script failing with `exc`."""
    error = database_error(exc, node)
    statement = statements[index]
    line = statement.line
    position = exc.diag.statement_position
    context = exc.diag.context
    if position is not None:
        line += statement.sql[: int(position) - 1].count("\n")
    elif context:
        line = _body_line(context, step, statements[: index + 1]) or line
    file = step.script.file
    error.extra.update(file=file, line=line)
    if step.version is not None:
        error.extra["version"] = str(step.version)
    if context:
        error.extra["context"] = context
    if isinstance(error, DatabaseError):
        error.detail = f"{file}:{line}: {error.detail}"
    return error


def _body_line(context: str, step: Step, statements: list[Statement]) -> int | None:
    """The file's line of the innermost PL/pgSQL frame whose body is in this script."""
    for text in context.splitlines():
        frame = _FRAME.match(text.strip())
        if frame is None:
            continue
        offset = _body_offset(frame["function"], step.script.sql, statements)
        if offset is not None:
            return step.script.line_of(offset) + int(frame["line"]) - 1
    return None


def _body_offset(function: str, sql: str, statements: list[Statement]) -> int | None:
    """Where the body of a DO block (the failing statement) or of the named function (its
    latest CREATE in the script so far) starts, as a character offset into `sql`."""
    if function == _DO_BLOCK:
        candidates = [statements[-1]] if statements[-1].tree.kind == "DoStmt" else []
    else:
        name = function.split("(", 1)[0].rsplit(".", 1)[-1].strip('"')
        candidates = [s for s in reversed(statements) if _creates_function(s, name)]
    for statement in candidates:
        body = statement.tree.node.get(statement.tree.kind, {})
        for option in body.get("args") or body.get("options") or ():
            element = option.get("DefElem") or {}
            if element.get("defname") == "as":
                location = element.get("arg_location", -1)
                if location is None or location < 0:
                    location = element.get("location", -1)
                if location >= 0:
                    # The tree counts bytes; the script's lines are counted in characters.
                    return len(sql.encode("utf-8")[:location].decode("utf-8", "ignore"))
    return None


def _creates_function(statement: Statement, name: str) -> bool:
    if statement.tree.kind != "CreateFunctionStmt":
        return False
    names = statement.tree.node["CreateFunctionStmt"].get("funcname") or []
    return bool(names) and names[-1].get("String", {}).get("sval") == name
