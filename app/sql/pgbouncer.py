"""Execution behind PgBouncer in transaction mode (MIRRORPOOL_PGBOUNCER): every request is a
transaction of its own that SETs LOCAL what it relies on, its statements sent one at a time,
unnamed (a pooler's server connections are not ours to prepare on), each read in chunks like
the rest. No DISCARD ALL runs afterwards: it cannot run in a transaction block, and after the
transaction the pooler may have handed the server session to another client. So what a
statement would leave there is refused before it runs (app/sql/transaction_pooling.py); and
what the database's own code may leave, which no tree shows (a function, a view's, a
trigger's: a session advisory lock, a session setting, a temporary table, a statement
PREPAREd by SQL), is undone on the same server session right after the transaction's end,
whether its COMMIT succeeded or failed (`finish`: the end and the cleanup in one pipeline,
which PgBouncer keeps on one server session until every Sync is answered), or after its
ROLLBACK when it failed (`roll_back`, the same way)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, pq

from app.cluster.node import shut
from app.errors import ResultTooLarge
from app.sql import pipeline, session, text_output, traces
from app.sql.checkout import Checkout, Ending
from app.sql.execution import Context, Limits
from app.sql.failures import StatementFailed
from app.sql.pipeline import Allowance, Command, Keep, UnitReply
from app.sql.placeholders import BoundSQL
from app.sql.results import StatementResult
from app.sql.session import Isolation
from app.sql.transactions import OVER_THE_LIMITS, begin, end_unless_cut, stoppable

logger = logging.getLogger(__name__)
T = TypeVar("T")

# What code of the database's own may leave in the server session beyond its transaction, as
# DISCARD ALL would undo it but within a transaction block: settings and the role set for the
# session, holdable cursors, LISTENs, temporary tables, sequence values (lastval, currval:
# read by the next client's code), statements PREPAREd by SQL (not the pooler's own,
# prepared by protocol), and last session advisory locks and the seed of random()
# (reseeded from a strong random value). What stays is what nothing undoes (a custom
# setting's placeholder, defined as '', and PL/pgSQL's compiled functions), as with any
# session.
_DEALLOCATE_SQL_PREPARED = session.DEALLOCATE_SQL_PREPARED
# After the end, on the same server session (finish), in a unit of its own: what code of the
# database's own may have left there, as DISCARD ALL would undo it, with the advisory locks
# let go and random() reseeded (_unlock_and_reseed), and the statements SQL PREPAREd. The
# settings go first, and the cleanup then runs under limits of its own (_CLEANUP_LIMITS_SQL):
# the request's statement timeout (what it drops, the request's own code made within that
# time, and dropping costs less than making) and a short lock timeout (a temporary table
# another session holds a lock on, through a permanent parent it inherits from, would
# otherwise hold the server session, and the request's answer, for as long as the other
# session likes).
# Each cleanup unit is an implicit transaction that takes its characteristics from the
# session's defaults as it starts, before the cleanup's RESET ALL: defaults the code left
# (serializable, read only, deferrable) would have its first snapshot wait for a safe one,
# for as long as another session's serializable transaction runs, with no limit of ours to
# stop it: the cleanup would hold the request's answer, and the unit that ends an unclean
# session (which runs under those defaults, the failed cleanup's RESET ALL rolled back) would
# keep the dying backend, and the pooler's server connection, waiting. Read committed, set
# first, before anything takes a snapshot, never waits so (read only, the cleanup still runs
# whole; a standby refuses READ WRITE) (pass 38).
_OWN_TRANSACTION = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
# Between the end and the cleanup, a unit of its own, committed whatever the cleanup then
# does: from there on any error ends the backend (a cancel, or the 1 ms statement timeout the
# code left, in the cleanup or in the unit after it, before that unit's handler), so no
# error can leave the session unclean with every Sync answered; the cleanup's RESET ALL
# turns it off again, for good only in a cleanup that succeeds (pass 39).
_ANY_ERROR_ENDS = "SET exit_on_error = on"
_RESET_ALL = "RESET ALL"
_AFTER_RESET_ALL = (
    "RESET ROLE",
    "CLOSE ALL",
    "UNLISTEN *",
    "DISCARD TEMP",
    "DISCARD SEQUENCES",
    _DEALLOCATE_SQL_PREPARED,
)
# With the limits, the session's usual temp_buffers, which PostgreSQL refuses once its local
# buffers were made at another size (code's, where the pin could make none: a login without
# TEMP, code SECURITY DEFINER): the cleanup fails, its backend ends, the pooler lets it go
# before DISCARD TEMP's drops scan them (pass 41).
_CLEANUP_LIMITS_SQL = (
    "SELECT pg_catalog.set_config('statement_timeout', '{statement}', true),"
    " pg_catalog.set_config('lock_timeout', '{lock}', true), pg_catalog.set_config("
    "'temp_buffers', pg_catalog.current_setting('temp_buffers'), true)"
)
CLEANUP_LOCK_TIMEOUT_MS = 200
# The cleanup's last act marks the session clean with a value of this finish's own; the
# unit after it ends the server session unless it finds that mark: a cleanup cut short by
# any error never goes back to the pooler as ready (its backend answers no Sync after that).
# That unit runs on what the failed cleanup left (its RESET ALL goes with it): a search_path
# and operators of the code's choosing, a 1 ms statement timeout, a role the code SET (one
# that may not signal the login's backend). So it names everything by its schema, goes back
# to the login's own role first, and ends the session on any error of its own too
# (query_canceled included).
_CLEANED = "mirrorpool.cleaned"
_MARK_CLEAN_SQL = f"SELECT pg_catalog.set_config('{_CLEANED}', '{{mark}}', false)"
_CLEAN_OR_END_SQL = (
    "DO $mirrorpool$ BEGIN"
    " PERFORM pg_catalog.set_config('role', 'none', false);"
    f" IF pg_catalog.current_setting('{_CLEANED}', true)"
    " OPERATOR(pg_catalog.=) '{mark}'::pg_catalog.text"
    f" THEN PERFORM pg_catalog.set_config('{_CLEANED}', '', false);"
    " ELSE PERFORM pg_catalog.pg_terminate_backend(pg_catalog.pg_backend_pid()); END IF;"
    " EXCEPTION WHEN OTHERS OR query_canceled THEN"
    " PERFORM pg_catalog.set_config('role', 'none', false),"
    " pg_catalog.pg_terminate_backend(pg_catalog.pg_backend_pid()); END $mirrorpool$"
)
# Before code of the database's own that may make temporary tables (it may run, and the
# transaction may write), once in each server session: its local buffers made at its usual
# temp_buffers (pg_my_temp_schema() is 0 until its first temporary table), so PostgreSQL
# refuses any other temp_buffers there. Code that raised it to 32GB first had each drop of
# a temporary table (the cleanup's DISCARD TEMP, a ROLLBACK, a backend's exit) scan 4 M
# buffer descriptors, 12 ms a table, with no timeout, while the pooler's server connection
# waited (pass 40). The setting goes after the CREATE, and an event trigger's code on it.
_PIN_LOCAL_BUFFERS_SQL = (
    "DO $mirrorpool$ BEGIN"
    " IF pg_catalog.pg_my_temp_schema() OPERATOR(pg_catalog.<>) 0::pg_catalog.oid"
    " THEN RETURN; END IF;"
    " CREATE TEMPORARY TABLE mirrorpool_buffers ();"
    " SET LOCAL temp_buffers TO DEFAULT;"
    " INSERT INTO pg_temp.mirrorpool_buffers DEFAULT VALUES;"
    " DROP TABLE pg_temp.mirrorpool_buffers;"
    " EXCEPTION WHEN read_only_sql_transaction OR insufficient_privilege THEN NULL;"
    " END $mirrorpool$"
)
# Every transaction's first act: session advisory locks still held on the server session are
# let go: what a client of the pooler that is not mirrorpool left there.
_UNLOCK_SQL = "SELECT pg_catalog.pg_advisory_unlock_all()"


def _unlock_and_reseed() -> str:
    return (
        f"SELECT pg_catalog.pg_advisory_unlock_all(), {traces.setseed_call(traces.reseed_value())}"
    )


def _may_leave_state(held: Checkout) -> bool:
    """Whether a statement of the request may have run code of the database's own, or left
    anything else in the session: what would have it reset or closed on a session of our
    own, or judged later."""
    return held.effect is not session.Effect.NONE or held.judged_later


def flushed(
    conn: AsyncConnection[Any],
    opening: str,
    ctx: Context,
    statements: list[BoundSQL],
    read_only: bool,
) -> str:
    """The transaction's opening, also letting go of session advisory locks left on the
    server session (_UNLOCK_SQL), and with the backend's table and function counters to be
    flushed when it goes idle after the transaction (PostgreSQL 15 on): until then the next
    client's code could read ours in pg_stat_xact_*, which no reset clears. (Ours are
    flushed so; a client before us that is not mirrorpool may still leave its own.) What
    SQL PREPAREd there is dropped by the opening itself before code of the database's own
    (transactions.begin); before code that may make temporary tables, the session's local
    buffers are made at their usual size (_PIN_LOCAL_BUFFERS_SQL)."""
    parts = [opening, _UNLOCK_SQL]
    if not read_only and any(ctx.traces(b.tree).forget for b in statements):
        parts.append(_PIN_LOCAL_BUFFERS_SQL)
    if conn.info.server_version >= 150000:
        parts.append(traces.FLUSH_STATISTICS_SQL)
    return "; ".join(parts)


async def finish(
    held: Checkout,
    cut: bool,
    isolation: Isolation | None,
    read_only: bool,
    text_output: bool,
    timeout_ms: int,
) -> None:
    """End the transaction as end_unless_cut would. When its statements may have left
    anything (_may_leave_state), what they left is undone on the same server session after
    the end, whether the end succeeded or failed: the end and the cleanup are units of one
    pipeline, sent in one write, and PgBouncer keeps the server session for its client
    until every Sync it was sent is answered. The cleanup then runs after anything that runs
    at the COMMIT (a deferred trigger whose code deferred its next event again), and after a
    COMMIT that such code failed, on the request that left it: never on the next client's
    time (pass 33).

    A cleanup that fails (its lock timeout, its statement timeout, any error) leaves the
    server session unclean: the error itself ends that backend (exit_on_error, set by a unit
    of its own before the cleanup), or else the unit after it does (_CLEAN_OR_END_SQL), so
    the pooler never takes it as ready; and mirrorpool closes its connection to the pooler
    as soon as it reads the failure, so the pooler lets the server go at once, however long
    the dying backend takes. The request keeps its answer: its end was answered first.

    While they run, the request's deadline and its client leaving only cancel, and only
    until the end is answered (Checkout.end), and a cancellation of the task waits for them
    (_uninterrupted): a client gone between the two answers would leave PgBouncer a server
    it takes as ready, which it hands on with the cleanup still running there. (One write
    for every unit needs PQsendPipelineSync: app/sql/pipeline/syncing.py.)"""
    conn = held.conn
    if not _may_leave_state(held):
        await end_unless_cut(conn, cut, isolation, read_only, text_output)
        return
    if text_output and not read_only and cut:  # (as end_unless_cut)
        await roll_back(held, timeout_ms)
        raise ResultTooLarge(OVER_THE_LIMITS)
    if conn.info.transaction_status == pq.TransactionStatus.INERROR:  # (a statement stopped)
        await roll_back(held, timeout_ms)
        return
    ended = await _end_and_clean(held, session.closing(isolation, read_only), timeout_ms)
    for reply in ended.replies:
        if reply.error is not None:
            await roll_back(held, timeout_ms)  # (failed, had it not reached the COMMIT)
            raise reply.error


async def _end_and_clean(held: Checkout, end: list[str], timeout_ms: int) -> UnitReply:
    """The end, the cleanup, the unit that ends an unclean session (finish): the end's unit."""
    conn = held.conn
    mark = secrets.token_hex(8)
    limits = _CLEANUP_LIMITS_SQL.format(
        statement=max(timeout_ms, 1), lock=min(timeout_ms, CLEANUP_LOCK_TIMEOUT_MS)
    )
    units = [
        [_once(statement) for statement in end],
        [_once(_ANY_ERROR_ENDS)],
        [
            _once(statement)
            for statement in (
                _OWN_TRANSACTION,
                _RESET_ALL,
                limits,
                *_AFTER_RESET_ALL,
                _unlock_and_reseed(),
                _MARK_CLEAN_SQL.format(mark=mark),
            )
        ],
        [_once(_OWN_TRANSACTION), _once(_CLEAN_OR_END_SQL.format(mark=mark))],
    ]
    ending = held.ending = Ending()
    settled: list[UnitReply] = []

    def answered() -> None:
        ending.answered = True

    def read(index: int, unit: UnitReply) -> None:
        settled.append(unit)
        failed = next((r.error for r in unit.replies if r.error is not None), None)
        if index == _CLEANUP and failed is not None:
            # Unclean: its error ended the backend (exit_on_error), or the unit after will;
            # the pooler lets it go now.
            logger.warning(
                "the cleanup after a transaction failed; its server session is ended: %s",
                failed,
            )
            shut(conn)

    try:
        await _uninterrupted(pipeline.run_units(conn, units, answered, read))
    except (psycopg.Error, OSError) as exc:  # (closed: the cleanup failed, or it broke)
        if not settled:
            raise
        logger.info("the server session ended after the transaction's end: %s", exc)
    finally:
        held.ending = None
    return settled[0]


_CLEANUP = 2  # (the cleanup's unit in finish's pipeline)


def _once(statement: str) -> Command:
    return Command(statement, prepare=False)


async def _uninterrupted(work: Awaitable[T]) -> T:
    """`work` to its end, even when the task awaiting it is cancelled meanwhile: the
    cancellation is raised once it is over."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


async def roll_back(held: Checkout, timeout_ms: int) -> None:
    """After a failure: the ROLLBACK and what it does not undo, as finish ends (in one query,
    what ran after the ROLLBACK had no timeout, and an error there handed the pooler an
    unclean session: pass 41)."""
    conn = held.conn
    if conn.closed or not _may_leave_state(held):
        return
    if conn.info.transaction_status not in (
        pq.TransactionStatus.INTRANS,
        pq.TransactionStatus.INERROR,
    ):
        return
    try:
        await _end_and_clean(held, ["ROLLBACK"], timeout_ms)
    except (psycopg.Error, OSError):
        await conn.close()


async def run(held: Checkout, bound: BoundSQL, limits: Limits, ctx: Context) -> StatementResult:
    """One statement in a transaction of its own."""
    conn = held.conn
    try:
        await conn.execute(
            flushed(
                conn,
                begin(ctx, limits.read_only, None, limits.timeout_ms, [bound], limits.text_output),
                ctx,
                [bound],
                limits.read_only,
            )
        )
        stop = stoppable([bound], None, limits.read_only, ctx)
        allowance = Allowance(ctx.options.max_response_bytes)
        result = await _statement(held, bound, ctx.keep(limits, stop, allowance), limits, ctx)
        cut = result.truncated or allowance.bytes < 0  # (as transactions.pipelined)
        await finish(held, cut, None, limits.read_only, limits.text_output, limits.timeout_ms)
    except psycopg.Error:
        await roll_back(held, limits.timeout_ms)
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
                ctx,
                statements,
                limits.read_only,
            )
        )
        allowance = Allowance(ctx.options.max_response_bytes)
        stop = stoppable(statements, isolation, limits.read_only, ctx)
        for position, bound in enumerate(statements):
            last = position == len(statements) - 1
            keep = ctx.keep(limits, stop and last, allowance)
            results.append(await _statement(held, bound, keep, limits, ctx))
        cut = allowance.bytes < 0 or any(r.truncated for r in results)
        await finish(held, cut, isolation, limits.read_only, limits.text_output, limits.timeout_ms)
    except StatementFailed:
        await roll_back(held, limits.timeout_ms)
        raise
    except psycopg.Error as exc:
        await roll_back(held, limits.timeout_ms)
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
