"""Execution behind PgBouncer in transaction mode (MIRRORPOOL_PGBOUNCER): every request is a
transaction of its own that SETs LOCAL what it relies on, its statements sent one at a time,
unnamed (a pooler's server connections are not ours to prepare on), each read in chunks like
the rest. No DISCARD ALL runs afterwards: it cannot run in a transaction block, and after the
transaction the pooler may have handed the server session to another client. So what a
statement would leave there is refused before it runs (app/sql/transaction_pooling.py); and
what the database's own code may leave, which no tree shows (a function, a view's, a
trigger's: a session advisory lock, a session setting, a temporary table), is undone inside
the query that ends the transaction, before and after its end (`finish`), or with its
ROLLBACK in one query when it failed (`roll_back`)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import AsyncConnection, pq, sql

from app.errors import ResultTooLarge
from app.sql import pipeline, session, text_output, traces
from app.sql.checkout import Checkout
from app.sql.execution import Context, Limits
from app.sql.failures import StatementFailed
from app.sql.pipeline import Allowance, Command, Keep
from app.sql.placeholders import BoundSQL
from app.sql.results import StatementResult
from app.sql.session import Isolation
from app.sql.transactions import OVER_THE_LIMITS, begin, end_unless_cut, stoppable

# What code of the database's own may leave in the server session beyond its transaction, as
# DISCARD ALL would undo it but within a transaction block: settings and the role set for the
# session, holdable cursors, LISTENs, temporary tables, sequence values (lastval, currval:
# read by the next client's code), statements PREPAREd by SQL (not the pooler's own,
# prepared by protocol), and last session advisory locks and the seed of random()
# (reseeded from a strong random value). What stays is what nothing undoes (a custom
# setting's placeholder, defined as '', and PL/pgSQL's compiled functions), as with any
# session.
_DEALLOCATE_SQL_PREPARED = session.DEALLOCATE_SQL_PREPARED
_RESET = (
    "RESET ALL; RESET ROLE; CLOSE ALL; UNLISTEN *; DISCARD TEMP; DISCARD SEQUENCES;"
    f" {_DEALLOCATE_SQL_PREPARED}"
)
# Inside the transaction, the deferred constraint triggers are fired first: what their code
# leaves is undone with the rest, and one that fails fails the transaction before its end.
# Settings are left to the cleanup after the end: a RESET ALL here would lift the request's
# own limits (SET LOCAL lock_timeout, client_connection_check_interval) for code that still
# runs at the COMMIT, and a failed COMMIT rolls back what the code set anyway.
_CLEAN_UP = (
    "SET CONSTRAINTS ALL IMMEDIATE; CLOSE ALL; UNLISTEN *; DISCARD TEMP; DISCARD SEQUENCES;"
    f" {_DEALLOCATE_SQL_PREPARED}"
)
# After a ROLLBACK: what it does not undo.
_AFTER_ROLLBACK = f"{_DEALLOCATE_SQL_PREPARED}; DISCARD SEQUENCES"
# Every transaction's first act: session advisory locks still held on the server session are
# let go. Only code that ran at a COMMIT which then failed can have left one (`finish`).
_UNLOCK_SQL = "SELECT pg_catalog.pg_advisory_unlock_all()"


def _unlock_and_reseed() -> str:
    return (
        "SELECT pg_catalog.pg_advisory_unlock_all(),"
        f" pg_catalog.setseed({traces.reseed_value()!r}::pg_catalog.float8)"
    )


def _may_leave_state(held: Checkout) -> bool:
    """Whether a statement of the request may have run code of the database's own, or left
    anything else in the session: what would have it reset or closed on a session of our
    own, or judged later."""
    return held.effect is not session.Effect.NONE or held.judged_later


def flushed(conn: AsyncConnection[Any], opening: sql.Composed) -> sql.Composed:
    """The transaction's opening, also letting go of session advisory locks left on the
    server session (_UNLOCK_SQL), and with the backend's table and function counters to be
    flushed when it goes idle after the transaction (PostgreSQL 15 on): until then the next
    client's code could read ours in pg_stat_xact_*, which no reset clears. (Ours are
    flushed so; a client before us that is not mirrorpool may still leave its own.) What
    SQL PREPAREd there is dropped by the opening itself before code of the database's own
    (transactions.begin)."""
    parts = [opening, sql.SQL(_UNLOCK_SQL)]
    if conn.info.server_version >= 150000:
        parts.append(sql.SQL(traces.FLUSH_STATISTICS_SQL))
    return sql.SQL("; ").join(parts)


async def finish(
    held: Checkout, cut: bool, isolation: Isolation | None, read_only: bool, text_output: bool
) -> None:
    """End the transaction as end_unless_cut would. When its statements may have left
    anything (_may_leave_state), it is undone inside the transaction, the transaction is
    ended, and it is undone again, all in one query: the same server session (the pooler
    lets it go only once the query is done), and after anything that runs at the COMMIT (a
    deferred trigger whose code deferred its next event again, past SET CONSTRAINTS ALL
    IMMEDIATE). If that COMMIT fails, what its code left beyond the rollback is harmless to
    the next client but a session advisory lock, which the next transaction lets go first
    (flushed)."""
    conn = held.conn
    if not _may_leave_state(held):
        await end_unless_cut(conn, cut, isolation, read_only, text_output)
        return
    if text_output and not read_only and cut:  # (as end_unless_cut)
        await roll_back(held)
        raise ResultTooLarge(OVER_THE_LIMITS)
    if conn.info.transaction_status == pq.TransactionStatus.INERROR:  # (a statement stopped)
        await roll_back(held)
        return
    ending = "; ".join(session.closing(isolation, read_only))
    await conn.execute(
        f"{_CLEAN_UP}; {_unlock_and_reseed()}; {ending}; {_RESET}; {_unlock_and_reseed()}"
    )


async def roll_back(held: Checkout) -> None:
    """After a failure: roll back, and in the same query (the same server session: the pooler
    lets it go only once the query is done) release what no rollback releases."""
    conn = held.conn
    if conn.closed or not _may_leave_state(held):
        return
    if conn.info.transaction_status not in (
        pq.TransactionStatus.INTRANS,
        pq.TransactionStatus.INERROR,
    ):
        return
    try:
        await conn.execute(f"ROLLBACK; {_AFTER_ROLLBACK}; {_unlock_and_reseed()}")
    except psycopg.Error:
        await conn.close()


async def run(held: Checkout, bound: BoundSQL, limits: Limits, ctx: Context) -> StatementResult:
    """One statement in a transaction of its own."""
    conn = held.conn
    try:
        await conn.execute(
            flushed(
                conn,
                begin(ctx, limits.read_only, None, limits.timeout_ms, [bound], limits.text_output),
            )
        )
        stop = stoppable([bound], None, limits.read_only, ctx)
        allowance = Allowance(ctx.options.max_response_bytes)
        result = await _statement(held, bound, ctx.keep(limits, stop, allowance), limits, ctx)
        cut = result.truncated or allowance.bytes < 0  # (as transactions.pipelined)
        await finish(held, cut, None, limits.read_only, limits.text_output)
    except psycopg.Error:
        await roll_back(held)
        raise
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
            flushed(
                conn,
                begin(
                    ctx,
                    limits.read_only,
                    isolation,
                    limits.timeout_ms,
                    statements,
                    limits.text_output,
                    deferrable,
                ),
            )
        )
        allowance = Allowance(ctx.options.max_response_bytes)
        stop = stoppable(statements, isolation, limits.read_only, ctx)
        for position, bound in enumerate(statements):
            last = position == len(statements) - 1
            keep = ctx.keep(limits, stop and last, allowance)
            results.append(await _statement(held, bound, keep, limits, ctx))
        cut = allowance.bytes < 0 or any(r.truncated for r in results)
        await finish(held, cut, isolation, limits.read_only, limits.text_output)
    except StatementFailed:
        await roll_back(held)
        raise
    except psycopg.Error as exc:
        await roll_back(held)
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
