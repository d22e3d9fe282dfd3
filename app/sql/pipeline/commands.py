"""What a pipeline is given (commands, and what to keep of their rows) and what it gives back
(a reply per command, grouped by unit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.pq.abc import PGresult

# What a prepared name stands for: the text, its parameter types, its output styles.
Key = tuple[str, Any, str]


@dataclass(slots=True)
class Allowance:
    """Bytes of rows (as JSON) a request may still keep, shared by its statements."""

    bytes: int


@dataclass(frozen=True, slots=True)
class Keep:
    """What to keep of a statement's rows: `rows` at most (max_rows + 1: the one more says
    the answer was cut), within `allowance`. With `stop`, a statement over its limit is
    cancelled on the server: only for one whose end loses nothing (a read, run last)."""

    rows: int
    allowance: Allowance | None = None
    stop: bool = False
    # Rows as PostgreSQL's own text (POST /sql), not loaded as JSON values; the answer then
    # also describes each column (Neon's `fields`), counted in the allowance.
    text: bool = False
    # Rows answered as objects, each repeating its columns' names (row_format "object",
    # Neon's default): counted in the allowance as they will be sent.
    named: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    """One statement and its parameters; `prepare=False` for texts sent once (BEGIN...).
    `keep` None: its rows are not kept (BEGIN, the limits, COMMIT)."""

    sql: str
    params: Sequence[Any] = ()
    prepare: bool = True
    keep: Keep | None = None
    # The output styles it runs under ("": mirrorpool's pinned ones). A plan may hold values
    # printed under them (a folded `'1 day'::interval::text`): names prepared under one set
    # of styles are never used under another.
    styles: str = ""


@dataclass(slots=True)
class Reply:
    """What came back for one command: its rows and the result that describes them (the
    last, or the first chunk of a statement stopped), or the error it raised."""

    result: PGresult | None = None
    error: psycopg.Error | None = None
    stale: bool = False
    rows: list[Any] = field(default_factory=list)
    # Rows were left out (beyond max_rows + 1, or the allowance).
    cut: bool = False
    # Rows the server sent, kept or not.
    seen: int = 0
    # The statement was cancelled on the server once it was over its limit.
    stopped: bool = False
    # Its command tag, and the rows it names (libpq puts it on the last chunk).
    command: str | None = None
    rowcount: int | None = None
    # A row of it was so large that its connection should not be kept (LARGE_ROW_BYTES).
    oversized: bool = False


@dataclass(slots=True)
class UnitReply:
    """A unit's replies, one per command, and when its Sync came back (monotonic s)."""

    replies: list[Reply]
    finished: float = 0.0

    @property
    def stale(self) -> bool:
        """True when a named statement of the unit was stale: nothing of it ran."""
        return any(r.stale for r in self.replies)
