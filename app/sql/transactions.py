"""Transactions: a read-only request, one with its own timeout, /v1/transaction and POST /sql
run their statements in a transaction of their own.

On a session of our own the whole transaction is pipelined (`pipelined`): BEGIN, the limits
(set_config(..., true)), every statement and its end go in one round trip, since no
statement can use another's result; the first error stops the rest and names its statement.
A read-only transaction is rolled back, never committed (session.closing). Behind PgBouncer
the same transaction runs one statement at a time (app/sql/pgbouncer.py), opened by
`begin`, ended by `end`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal

import psycopg
from psycopg import AsyncConnection

from app.errors import ResultTooLarge
from app.sql import pipeline, plain, session, text_output, traces
from app.sql.checkout import Checkout
from app.sql.execution import Context, Limits
from app.sql.failures import StatementFailed, rollback
from app.sql.pipeline import Allowance, Command
from app.sql.placeholders import BoundSQL
from app.sql.plain import IMMEDIATE
from app.sql.results import StatementResult
from app.sql.session import Isolation

OVER_THE_LIMITS = (
    "a result is over MIRRORPOOL_MAX_ROWS or MIRRORPOOL_MAX_RESPONSE_BYTES; the transaction "
    "was rolled back (select fewer rows with LIMIT)"
)


async def pipelined(
    held: Checkout,
    statements: list[BoundSQL],
    limits: Limits,
    isolation: Isolation | None,
    ctx: Context,
    deferrable: bool = False,
) -> list[StatementResult]:
    """BEGIN, the limits, every statement and the transaction's end in one round trip
    (pipeline mode: the statements cannot use each other's results, so nothing waits for
    them). Raises StatementFailed naming the statement that failed."""
    conn = held.conn
    # Marked before anything runs: a statement that fails, or whose answer cannot be made,
    # may have changed the session all the same (a ROLLBACK does not undo a PREPARE, a
    # session lock or the random seed).
    found = [ctx.traces(b.tree) for b in statements]
    for bound, traced in zip(statements, found, strict=True):
        ctx.mark(held, bound.tree, traced)
    values = [str(limits.timeout_ms), str(ctx.options.lock_timeout_ms)]
    # Before code the tree cannot follow, nothing of other keys' statements is left for it to
    # read: their sequence values, the statements prepared for them (none is used by name
    # in this unit, then).
    hidden = any(t.forget for t in found)
    opening = [
        *(
            [Command("DISCARD SEQUENCES", prepare=False)]
            if hidden or any(session.reads_sequence_state(b.tree) for b in statements)
            else []
        ),
        *([Command("DEALLOCATE ALL", prepare=False)] if hidden else []),
        *([plain.reseeding()] if any(t.reseed for t in found) else []),
        *(
            Command(sql, prepare=False)
            for sql in session.opening(isolation, limits.read_only, deferrable)
        ),
        Command(
            text_output.LIMITS_AND_STYLES_SQL if limits.text_output else session.LOCAL_LIMITS_SQL,
            values,
            prepare=False,
        ),
        *([IMMEDIATE] if _alone_writing(statements, limits.read_only) else []),
    ]
    first = len(opening)
    prepare = not hidden and not any(session.sets_anything(b.tree) for b in statements)
    # The last statement over its limit may be stopped on the server when ending the
    # transaction there loses nothing (stoppable).
    stop = stoppable(statements, isolation, limits.read_only, ctx)
    last = len(statements) - 1
    styles = text_output.STYLES if limits.text_output else ""
    # Text answers (POST /sql) over the limits fail (507) instead of arriving cut: a
    # transaction that may write is ended only once its answers are known to fit.
    end_later = limits.text_output and not limits.read_only
    for attempt in (1, 2):
        allowance = Allowance(ctx.options.max_response_bytes)
        commands = [
            *opening,
            *(
                Command(
                    b.sql,
                    b.params,
                    prepare=prepare,
                    keep=ctx.keep(limits, stop and i == last, allowance),
                    styles=styles,
                )
                for i, b in enumerate(statements)
            ),
            *(
                Command(sql, prepare=False)
                for sql in session.closing(isolation, limits.read_only)
                if not end_later
            ),
        ]
        *_, unit = await pipeline.run_units(
            conn, [*plain.flushing(conn, hidden and attempt == 1), commands]
        )
        replies = unit.replies
        # After a statement stopped on the server the transaction's end failed, or did not
        # run: it only held reads, and is rolled back.
        stopped = next((i for i, r in enumerate(replies) if r.stopped), len(replies))
        failed = next((i for i, r in enumerate(replies[:stopped]) if r.error is not None), None)
        if failed is None:
            if stopped < len(replies):
                await rollback(conn)
            break
        if unit.stale and attempt == 1:
            # A prepared statement was gone or planned for an older schema: the transaction
            # failed before it ran and is rolled back; run it once more.
            await rollback(conn)
            continue
        error = replies[failed].error
        assert error is not None
        index = failed - first if first <= failed < first + len(statements) else None
        raise StatementFailed(error, index)
    if end_later:
        # (an allowance overdrawn by what the answer wraps its results in is over the limits
        # too, though no rows were cut: results with no rows, or only a description)
        cut = allowance.bytes < 0 or any(r.cut for r in replies[first : first + len(statements)])
        await end_unless_cut(conn, cut, isolation, limits.read_only, limits.text_output)
    results = []
    node = held.node.name
    for reply in replies[first : first + len(statements)]:
        if reply.oversized:
            held.mark(session.Effect.CLOSE)
        if limits.text_output:
            results.append(text_output.from_reply(reply, limits.max_rows))
            continue
        answer = await pipeline.answer(
            conn, node, ctx.types, reply, limits.max_rows, limits.row_format
        )
        results.append(answer)
    return results


def begin(
    ctx: Context,
    read_only: bool,
    isolation: Isolation | None,
    timeout_ms: int,
    statements: list[BoundSQL],
    text: bool = False,
    deferrable: bool = False,
) -> str:
    """BEGIN and the transaction's limits as one simple query, with what the session does
    not carry set LOCAL (behind PgBouncer)."""
    local = ctx.local_settings
    found = [ctx.traces(b.tree) for b in statements]
    hidden = any(t.forget for t in found)
    if text:  # Limits.text_output, behind PgBouncer: SET LOCAL, gone with the transaction
        local = {**(local or {}), **text_output.POSTGRES_STYLES}
    return begin_sql(
        read_only=read_only,
        isolation=isolation,
        timeout_ms=timeout_ms,
        lock_timeout_ms=ctx.options.lock_timeout_ms,
        local_settings=local,
        discard_sequences=hidden or any(session.reads_sequence_state(b.tree) for b in statements),
        deferrable=deferrable,
        immediate=_alone_writing(statements, read_only),
        reseed=traces.reseed_value() if any(t.reseed for t in found) else None,
        # (behind a pooler, only what SQL PREPAREd: its own prepared statements are on the
        # server connection too, and nothing is prepared by name there for a key; another
        # client of the pooler, or a request of ours whose end was cut short, may have left
        # them)
        deallocate=("all" if ctx.options.own_sessions else "sql") if hidden else None,
    )


def begin_sql(
    *,
    read_only: bool,
    isolation: Isolation | None,
    timeout_ms: int,
    lock_timeout_ms: int,
    local_settings: Mapping[str, str] | None = None,
    discard_sequences: bool = False,
    deferrable: bool = False,
    immediate: bool = False,
    deallocate: Literal["all", "sql"] | None = None,
    reseed: float | None = None,
) -> str:
    """BEGIN with the transaction's mode, its local timeouts and `local_settings` (for
    sessions that do not carry them: behind a transaction pooler), as one simple query;
    with `discard_sequences`, the session's sequence values (another client's) forgotten;
    with `deallocate`, the statements prepared on it ("all"; "sql": only those SQL PREPAREd,
    not a pooler's own, session.DEALLOCATE_SQL_PREPARED); with `reseed`, random() seeded with it;
    with `immediate`, deferred constraints checked by each statement (IMMEDIATE_SQL). Text
    made once a shape (psycopg's composition, per request, was a fifth of its CPU)."""
    local = tuple((local_settings or {}).items())
    text = _begin_text(
        read_only, isolation, deferrable, int(timeout_ms), int(lock_timeout_ms), local
    )
    if discard_sequences:
        text += "; DISCARD SEQUENCES"
    if deallocate is not None:
        text += "; " + (
            "DEALLOCATE ALL" if deallocate == "all" else session.DEALLOCATE_SQL_PREPARED
        )
    if reseed is not None:
        text += f"; SELECT {traces.setseed_call(reseed)}"
    return f"{text}; {session.IMMEDIATE_SQL}" if immediate else text


@functools.lru_cache(maxsize=256)
def _begin_text(
    read_only: bool,
    isolation: Isolation | None,
    deferrable: bool,
    timeout_ms: int,
    lock_timeout_ms: int,
    local: tuple[tuple[str, str], ...],
) -> str:
    # Names and values are mirrorpool's own constants (SESSION_SETTINGS), never a request's.
    if any("'" in value or "\\" in value for _, value in local):
        raise ValueError("a session setting's value to quote")
    return "; ".join(
        [
            *session.opening(isolation, read_only, deferrable),
            f"SET LOCAL statement_timeout = {timeout_ms}",
            f"SET LOCAL lock_timeout = {lock_timeout_ms}",
            *(f"SET LOCAL {name} = '{value}'" for name, value in local),
        ]
    )


def _alone_writing(statements: list[BoundSQL], read_only: bool) -> bool:
    """One statement on its own that may write: its deferred constraints are checked inside
    it, under its timeout, not at the COMMIT, where PostgreSQL lifts the statement timeout
    (a transaction of several keeps what its statements chose to defer)."""
    return not read_only and len(statements) == 1 and session.changes_data(statements[0].tree)


def stoppable(
    statements: list[BoundSQL], isolation: Isolation | None, read_only: bool, ctx: Context
) -> bool:
    """True when the transaction's last statement may be stopped on the server once it is
    over its limit: ending the transaction there loses nothing (it only reads) and proves
    nothing wrong (a serializable one's reads are proven only by its commit)."""
    if isolation == "serializable":
        return False
    return read_only or all(ctx.pure_read(b.tree) for b in statements)


async def end_unless_cut(
    conn: AsyncConnection[Any],
    cut: bool,
    isolation: Isolation | None,
    read_only: bool,
    text_output: bool,
) -> None:
    """End the transaction; a text-answer one (POST /sql) that may write and has a result
    over the limits is rolled back instead (507): its answer would be refused after its
    writes were committed."""
    if text_output and not read_only and cut:
        await rollback(conn)
        raise ResultTooLarge(OVER_THE_LIMITS)
    await end(conn, isolation, read_only)


async def end(conn: AsyncConnection[Any], isolation: Isolation | None, read_only: bool) -> None:
    """End a transaction run statement by statement: as it should end, or rolled back when
    its last statement was stopped on the server (the cancel failed the transaction)."""
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
        await rollback(conn)
        return
    for statement in session.closing(isolation, read_only):
        await conn.execute(statement)
