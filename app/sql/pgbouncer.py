"""Execution behind PgBouncer in transaction mode (MIRRORPOOL_PGBOUNCER): every request is a
transaction of its own that SETs LOCAL what it relies on, its statements sent one at a time,
unnamed (a pooler's server connections are not ours to prepare on), each read in chunks like
the rest. Nothing is reset afterwards: the reset would reach another client's session, so
what would need one is refused before it runs (app/sql/transaction_pooling.py)."""

from __future__ import annotations

import psycopg

from app.sql import pipeline, session, text_output
from app.sql.checkout import Checkout
from app.sql.execution import Context, Limits
from app.sql.failures import StatementFailed
from app.sql.pipeline import Allowance, Command, Keep
from app.sql.placeholders import BoundSQL
from app.sql.results import StatementResult
from app.sql.session import Isolation
from app.sql.transactions import begin, end_unless_cut, stoppable


async def run(held: Checkout, bound: BoundSQL, limits: Limits, ctx: Context) -> StatementResult:
    """One statement in a transaction of its own."""
    conn = held.conn
    await conn.execute(
        begin(ctx, limits.read_only, None, limits.timeout_ms, [bound], limits.text_output)
    )
    stop = stoppable([bound], None, limits.read_only, ctx)
    result = await _statement(held, bound, ctx.keep(limits, stop), limits, ctx)
    await end_unless_cut(conn, result.truncated, None, limits.read_only, limits.text_output)
    return result


async def transaction(
    held: Checkout,
    statements: list[BoundSQL],
    limits: Limits,
    isolation: Isolation,
    ctx: Context,
    deferrable: bool = False,
) -> list[StatementResult]:
    """The statements in one transaction, one at a time; raises StatementFailed naming the
    statement that failed (the first one not answered)."""
    conn = held.conn
    results: list[StatementResult] = []
    try:
        await conn.execute(
            begin(
                ctx,
                limits.read_only,
                isolation,
                limits.timeout_ms,
                statements,
                limits.text_output,
                deferrable,
            )
        )
        allowance = Allowance(ctx.options.max_response_bytes)
        stop = stoppable(statements, isolation, limits.read_only, ctx)
        for position, bound in enumerate(statements):
            last = position == len(statements) - 1
            keep = ctx.keep(limits, stop and last, allowance)
            results.append(await _statement(held, bound, keep, limits, ctx))
        cut = any(r.truncated for r in results)
        await end_unless_cut(conn, cut, isolation, limits.read_only, limits.text_output)
    except StatementFailed:
        raise
    except psycopg.Error as exc:
        index = len(results) if len(results) < len(statements) else None
        raise StatementFailed(exc, index) from None
    return results


async def _statement(
    held: Checkout, bound: BoundSQL, keep: Keep, limits: Limits, ctx: Context
) -> StatementResult:
    """One statement of the transaction (one unit, nothing prepared)."""
    conn, node = held.conn, held.node.name
    ctx.mark(held, bound.tree)
    command = Command(bound.sql, bound.params, prepare=False, keep=keep)
    (unit,) = await pipeline.run_units(conn, [[command]])
    (reply,) = unit.replies
    if reply.error is not None:
        raise reply.error
    if reply.oversized:
        held.mark(session.Effect.CLOSE)
    if limits.text_output:
        return text_output.from_reply(reply, limits.max_rows)
    return await pipeline.answer(conn, node, ctx.types, reply, limits.max_rows, limits.row_format)
