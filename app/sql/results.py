"""What a statement returned, as the API reports it, whichever way it ran."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from app.sql.columns import Column, TextField
from app.sql.tree import Tree

RowFormat = Literal["array", "object"]

_DML = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "COPY"})


@dataclass(slots=True)
class StatementResult:
    """What one statement returned."""

    columns: list[Column]
    rows: list[Any]
    command: str | None
    rows_affected: int | None
    truncated: bool = False
    # Set instead of `columns` when the values are PostgreSQL's text (Limits.text_output).
    fields: list[TextField] | None = None

    def as_json(self) -> dict[str, Any]:
        """The result as the API reports it (rows stay as fetched)."""
        return {
            "columns": [c.as_json() for c in self.columns],
            "rows": self.rows,
            "row_count": len(self.rows),
            "rows_affected": self.rows_affected,
            "command": self.command,
            "truncated": self.truncated,
        }


def statement_result(
    columns: list[Column],
    rows: list[Any],
    command: str | None,
    rowcount: int | None,
    max_rows: int,
    row_format: RowFormat,
    cut: bool = False,
) -> StatementResult:
    """A result from up to max_rows + 1 fetched rows (one more says it was truncated;
    `cut`: rows were left out for their size)."""
    truncated = cut or len(rows) > max_rows
    if truncated:
        del rows[max_rows:]
    if row_format == "object":
        names = [c.name for c in columns]
        rows = [dict(zip(names, row, strict=True)) for row in rows]
    return StatementResult(
        columns, rows, command, affected(command, rowcount, len(rows)), truncated
    )


def affected(command: str | None, rowcount: int | None, fetched: int) -> int | None:
    """rows_affected for DML (INSERT/UPDATE/DELETE/MERGE/COPY), None otherwise."""
    tag = (command or "").split(" ", 1)[0]
    if tag in _DML:
        return rowcount if rowcount is not None and rowcount >= 0 else fetched
    return None


def streamed_tag(tree: Tree, count: int) -> str:
    """The status tag of a streamed statement (psycopg keeps only the last chunk's result)."""
    keyword = _TAGS.get(tree.kind, "SELECT")
    if keyword == "INSERT":
        return f"INSERT 0 {count}"
    return f"{keyword} {count}"


_TAGS = {
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "CopyStmt": "COPY",
}
