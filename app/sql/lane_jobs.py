"""What a multiplexing lane (app/sql/multiplex.py) holds and counts: a `Job` (one statement
waiting, and the future its request awaits), `WaitedForLock` (a write in a lane that waited for
a lock and must run again on its own) and `LaneStats`, the counters /pool/stats shows.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from app.sql.results import RowFormat, StatementResult
from app.sql.tree import Tree


@dataclass(slots=True)
class Job:
    """One statement waiting in a lane, and the future its request awaits."""

    sql: str
    tree: Tree
    params: list[Any]
    max_rows: int
    row_format: RowFormat
    future: asyncio.Future[StatementResult]
    # When its statement timeout runs out (time.monotonic()): a write not sent by then is
    # not sent at all, and one sent gets what is left as a statement_timeout of its own.
    timeout_at: float = math.inf
    queued: float = field(default_factory=time.monotonic)
    retried: bool = False
    # Handed to the server (in a batch): a write's outcome is then the server's to tell.
    sent: bool = False
    # Answered as PostgreSQL's own text under its default styles (POST /sql).
    text: bool = False

    @property
    def writes(self) -> bool:
        return self.tree.kind != "SelectStmt"

    def in_flight(self) -> bool:
        """True while a write was sent and its outcome has not come back: its request waits
        for that outcome rather than answer at its deadline (app/sql/guard.py Guard.spare)."""
        return self.sent and not self.future.done()


class WaitedForLock(Exception):
    """A write in a lane waited for a lock longer than LANE_LOCK_WAIT (app/sql/multiplex.py):
    it was cancelled there (its transaction undone) and must run again on a connection of its
    own, where waiting holds up no one else."""


@dataclass
class LaneStats:
    """Counters shown in /pool/stats."""

    statements: int = 0
    batches: int = 0
    largest_batch: int = 0

    def as_json(self) -> dict[str, Any]:
        """The counters, with the mean batch size."""
        mean = round(self.statements / self.batches, 2) if self.batches else 0.0
        return {
            "statements": self.statements,
            "batches": self.batches,
            "mean_batch": mean,
            "largest_batch": self.largest_batch,
        }
