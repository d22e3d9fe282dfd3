"""Streaming one statement's rows (POST /v1/query/stream) from a server-side read in chunks.

Rows come in chunks of `chunk_rows` straight from the server (libpq's chunked mode), so
memory stays flat whatever the size of the result. A producer task, started through the
supervisor, owns the connection and hands chunks over a short queue: the consumer can give
up at the deadline, or when its client leaves or stops reading, without waiting for the
server; the producer's guard (app/sql/guard.py) then ends the statement and its transaction
there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg

from app.cluster.cluster import Intent
from app.errors import InvalidSQL, MirrorpoolError
from app.sql import pgbouncer, pipeline, plain, session
from app.sql.checkout import Checkout
from app.sql.columns import Field
from app.sql.execution import Context, Limits
from app.sql.failures import Failures, rollback
from app.sql.guard import Guard
from app.sql.placeholders import BoundSQL
from app.sql.results import StatementResult, affected, streamed_tag
from app.sql.transactions import begin
from app.sql.tree import NO_ROWS_TO_STREAM, returns_rows
from app.supervisor import Supervisor

Event = tuple[str, Any]
# A checkout on the node serving the stream, picked as it is entered (Engine.session).
Session = Callable[[], AbstractAsyncContextManager[Checkout]]


class Streams:
    """Runs streams: each one a producer task and the consumer that reads its queue."""

    def __init__(self, ctx: Context, failures: Failures, supervisor: Supervisor) -> None:
        self._ctx = ctx
        self._failures = failures
        self._supervisor = supervisor

    async def stream(
        self, bound: BoundSQL, limits: Limits, chunk_rows: int, checkout: Session
    ) -> AsyncGenerator[Event]:
        """Yield ("node", name), ("columns", [...]), ("rows", [...])..., ("end", result)."""
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=2)
        guard = Guard(limits.timeout_ms)
        producer = self._supervisor.spawn(
            self._produce(bound, limits, chunk_rows, queue, guard, checkout), name="stream"
        )
        try:
            while True:
                # The deadline is the producer's guard: past it, the producer hands over a
                # QueryTimeout, whatever it was doing.
                kind, payload = await queue.get()
                if kind == "error":
                    raise payload
                yield kind, payload
                if kind == "end":
                    return
        finally:
            if not producer.done():
                guard.end()
                producer.cancel()

    async def _produce(
        self,
        bound: BoundSQL,
        limits: Limits,
        chunk_rows: int,
        queue: asyncio.Queue[Event],
        guard: Guard,
        checkout: Session,
    ) -> None:
        try:
            async with guard, checkout() as held:
                guard.use(held)
                result = await self._rows(held, bound, limits, chunk_rows, queue)
            await queue.put(("end", result))
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put(("error", exc))

    async def _open(self, held: Checkout, bound: BoundSQL, limits: Limits) -> None:
        """BEGIN and the transaction's limits; before code of the database's own, the
        backend's counters of earlier transactions flushed (plain.flushing), and behind a
        pooler ours flushed after (pgbouncer.flushed)."""
        conn = held.conn
        if held.own_session and self._ctx.traces(bound.tree).forget:
            for (flush,) in plain.flushing(conn, True):
                await conn.execute(flush.sql)
        opening = begin(self._ctx, limits.read_only, None, limits.timeout_ms, [bound])
        if not held.own_session:
            opening = pgbouncer.flushed(conn, opening, self._ctx, [bound], limits.read_only)
        await conn.execute(opening)

    async def _rows(
        self,
        held: Checkout,
        bound: BoundSQL,
        limits: Limits,
        chunk_rows: int,
        queue: asyncio.Queue[Event],
    ) -> StatementResult:
        conn, node = held.conn, held.node.name
        types = self._ctx.types
        await queue.put(("node", node))
        self._ctx.mark(held, bound.tree)
        try:
            await self._open(held, bound, limits)
            # The stream holds its connection until its last row: type names the node has
            # not met are looked up now, before it starts.
            fields = await pipeline.describe(conn, bound.sql, bound.params)
            if not fields and returns_rows(bound.tree) is None:
                # The server's description, where the tree cannot tell (a CALL of a
                # procedure without OUT parameters): nothing has run yet.
                await rollback(conn)
                raise InvalidSQL(NO_ROWS_TO_STREAM)
            await types.columns(conn, node, [Field(n, oid) for n, oid in fields])
            cur = conn.cursor()
            sent_columns = False
            batch: list[Any] = []
            count = 0
            async for row in cur.stream(bound.sql, bound.params, size=chunk_rows):
                if not sent_columns:
                    await queue.put(("columns", types.as_known(conn, node, cur.description)))
                    sent_columns = True
                batch.append(row)
                if len(batch) >= chunk_rows:
                    count += len(batch)
                    await queue.put(("rows", batch))
                    batch = []
            if not sent_columns:
                await queue.put(("columns", await types.columns(conn, node, cur.description)))
            count += len(batch)
            if batch:
                await queue.put(("rows", batch))
            command = cur.statusmessage or streamed_tag(bound.tree, count)
            if held.own_session:
                for statement in session.closing(None, limits.read_only):
                    await conn.execute(statement)
            else:
                await pgbouncer.finish(
                    held, False, None, limits.read_only, False, limits.timeout_ms
                )
        except psycopg.Error as exc:
            if not held.own_session:
                await pgbouncer.roll_back(held, limits.timeout_ms)
            await rollback(conn)
            intent: Intent = "read" if limits.read_only else "write"
            error: MirrorpoolError = await self._failures.error(exc, conn, node, intent)
            raise error from None
        return StatementResult([], [], command, affected(command, None, count))
