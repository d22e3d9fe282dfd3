"""Plain execution: one statement in autocommit, one round trip, on a pooled connection whose
session already carries the default timeouts (a request with the default timeout, that may
write, on a session of our own)."""

from __future__ import annotations

import math
import time
from typing import Any

from psycopg import AsyncConnection

from app.sql import pipeline, session, text_output, traces
from app.sql.checkout import Checkout
from app.sql.execution import Context, Limits
from app.sql.pipeline import Command, Keep
from app.sql.placeholders import BoundSQL
from app.sql.quick import Known
from app.sql.results import StatementResult

# Before a data-changing statement on its own (autocommit: its commit is its unit's Sync):
# deferred constraints are checked inside the statement, under its timeout, and a violation
# is its own error. Checked at the Sync instead, they would run with no statement timeout
# (PostgreSQL lifts it for a commit's work) and fail where libpq reports no statement.
IMMEDIATE = Command(session.IMMEDIATE_SQL, prepare=False)


# Before code the tree cannot follow (traces.Traces.forget): other keys' sequence values
# and the statements prepared for them are gone; the statement itself is then not prepared.
FORGET_TRACES = [
    Command("DISCARD SEQUENCES", prepare=False),
    Command("DEALLOCATE ALL", prepare=False),
]
# And the counters of earlier transactions, flushed in a unit of their own (flushing).
_FLUSH_STATISTICS = Command(traces.FLUSH_STATISTICS_SQL, prepare=False)


def reseeding() -> Command:
    """random() seeded anew (traces.Traces.reseed)."""
    return Command(traces.RESEED_SQL, [traces.reseed_value()], prepare=False)


def flushing(conn: AsyncConnection[Any], forget: bool) -> list[list[Command]]:
    """The unit to send before a statement that forgets traces (`forget`), if any."""
    return [[_FLUSH_STATISTICS]] if forget and conn.info.server_version >= 150000 else []


def commands_for(
    sql: str,
    params: list[Any],
    keep: Keep,
    text: bool,
    writes: bool = False,
    forget: bool = False,
    reseed: bool = False,
) -> list[Command]:
    """A statement's commands, for one Sync of their own. A pure read answered as text
    (POST /sql) runs under PostgreSQL's default styles, set local to its implicit
    transaction first, and is prepared apart from those run under mirrorpool's styles; a
    statement that writes checks its deferred constraints itself (IMMEDIATE); with `forget`,
    the session's traces of other keys go first (FORGET_TRACES)."""
    statement = Command(
        sql, params, prepare=not forget, keep=keep, styles=text_output.STYLES if text else ""
    )
    first = [*(FORGET_TRACES if forget else []), *([reseeding()] if reseed else [])]
    if text:
        return [*first, Command(text_output.STYLES_SQL), statement]
    return [*first, IMMEDIATE, statement] if writes else [*first, statement]


async def run(
    held: Checkout, bound: BoundSQL, limits: Limits, ctx: Context, known: Known | None
) -> StatementResult:
    """Run the statement; how long it took tells the lanes (`known`) whether it is quick.

    A read over its limit is stopped on the server; a write's rows beyond it are read and
    dropped (stopping it would undo it)."""
    started = time.perf_counter()
    found = ctx.traces(bound.tree)
    ctx.mark(held, bound.tree, found)
    keep = ctx.keep(limits, ctx.pure_read(bound.tree))
    writes = session.changes_data(bound.tree)
    forget, reseed = found.forget, found.reseed
    command = commands_for(
        bound.sql, bound.params, keep, limits.text_output, writes, forget, reseed
    )
    *_, unit = await pipeline.run_units(held.conn, [*flushing(held.conn, forget), command])
    if unit.stale:  # our prepared statement was gone or planned for an older schema
        keep = ctx.keep(limits, keep.stop)
        command = commands_for(
            bound.sql, bound.params, keep, limits.text_output, writes, forget, reseed
        )
        (unit,) = await pipeline.run_units(held.conn, [command])
    reply = unit.replies[-1]
    error = next((r.error for r in unit.replies if r.error is not None), None)
    if error is not None:
        raise error
    if reply.oversized:
        held.mark(session.Effect.CLOSE)
    if limits.text_output:
        result = text_output.from_reply(reply, limits.max_rows)
    else:
        result = await pipeline.answer(
            held.conn, held.node.name, ctx.types, reply, limits.max_rows, limits.row_format
        )
    if known is not None and limits.role is None:
        # A text that had to be stopped stays out of the lanes: stopping it there costs its
        # neighbours a cancel.
        seconds = math.inf if reply.stopped else time.perf_counter() - started
        known.observe(limits.key, bound.tree, bound.sql, seconds)
    return result
