"""Plain execution: one statement in autocommit, one round trip, on a pooled connection whose
session already carries the default timeouts (a request with the default timeout, that may
write, on a session of our own)."""

from __future__ import annotations

import math
import time

from app.sql import pipeline, session
from app.sql.checkout import Checkout
from app.sql.execution import Context, Limits
from app.sql.pipeline import Command
from app.sql.placeholders import BoundSQL
from app.sql.quick import Known
from app.sql.results import StatementResult


async def run(
    held: Checkout, bound: BoundSQL, limits: Limits, ctx: Context, known: Known | None
) -> StatementResult:
    """Run the statement; how long it took tells the lanes (`known`) whether it is quick.

    A read over its limit is stopped on the server; a write's rows beyond it are read and
    dropped (stopping it would undo it)."""
    started = time.perf_counter()
    held.mark(ctx.effect(bound.tree))
    keep = ctx.keep(limits, ctx.pure_read(bound.tree))
    command = [Command(bound.sql, bound.params, keep=keep)]
    (unit,) = await pipeline.run_units(held.conn, [command])
    if unit.stale:  # our prepared statement was gone or planned for an older schema
        command = [Command(bound.sql, bound.params, keep=ctx.keep(limits, keep.stop))]
        (unit,) = await pipeline.run_units(held.conn, [command])
    (reply,) = unit.replies
    if reply.error is not None:
        raise reply.error
    if reply.oversized:
        held.mark(session.Effect.CLOSE)
    result = await pipeline.answer(
        held.conn, held.node.name, ctx.types, reply, limits.max_rows, limits.row_format
    )
    if known is not None and limits.role is None:
        # A text that had to be stopped stays out of the lanes: stopping it there costs its
        # neighbours a cancel.
        seconds = math.inf if reply.stopped else time.perf_counter() - started
        known.observe(limits.key, bound.tree, bound.sql, seconds)
    return result
