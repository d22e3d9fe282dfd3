"""The query engine: runs statements on the right node within their limits and deadline.

A plain request (default timeout, may write) is one round trip: the statement runs in
autocommit on a pooled connection whose session already carries the default timeouts. A
read-only request, or one with its own timeout, runs as BEGIN [READ ONLY], the limits, the
statement and its end (COMMIT; a read-only one is rolled back), pipelined in one round trip.
Every request runs on a connection of its key's login (app/sql/checkout.py). The deadline is
enforced here too, not only by the server's statement_timeout: a frozen server cannot hold
a request past it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection

from app.cluster.cluster import Cluster, Intent
from app.cluster.node import Node
from app.errors import ClientGone, MirrorpoolError, NodeFailed, NoWriterError, QueryTimeout
from app.settings import Settings
from app.sql import checkout, pipeline, session, text_output
from app.sql.checkout import Checkout
from app.sql.columns import Field, TypeNames
from app.sql.errors import database_error
from app.sql.guard import DEADLINE_GRACE_S, Guard
from app.sql.multiplex import Multiplexer
from app.sql.pipeline import Command
from app.sql.placeholders import BoundSQL
from app.sql.results import RowFormat, StatementResult, affected, statement_result, streamed_tag
from app.sql.session import Isolation
from app.sql.types import SESSION_SETTINGS

T = TypeVar("T")
# Returns once the HTTP client has gone; called only if the request lasts (app/sql/guard.py).
Abort = Callable[[], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Limits:
    """How long a request may run and how many rows it may return."""

    timeout_ms: int
    max_rows: int
    read_only: bool = False
    row_format: RowFormat = "array"
    role: str | None = None
    # The key that sent the request: its quick reads share lanes with its own only.
    key: str = ""
    # Values as PostgreSQL's own text, under its default output styles (app/sql/text_output.py).
    text_output: bool = False


@dataclass(slots=True)
class Outcome:
    """Results of a request, with the node that served it and how long it took."""

    results: list[StatementResult]
    node: str
    duration_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Engine:
    """Runs bound statements through the cluster."""

    def __init__(self, cluster: Cluster, settings: Settings) -> None:
        self.cluster = cluster
        self.settings = settings
        self.types = TypeNames()
        # False behind a transaction pooler (MIRRORPOOL_PGBOUNCER): a pooled connection is
        # then no server session of our own. Nothing it carries can be relied on (no plain
        # fast path: every request is a transaction that SETs LOCAL what it needs), and
        # nothing may be reset in it (the reset would reach another client's session).
        self.own_sessions = not settings.pgbouncer
        self._local_settings = None if self.own_sessions else SESSION_SETTINGS
        # Quick plain statements share connections, pipelined (app/sql/multiplex.py).
        self.mux = (
            Multiplexer(cluster, settings, self.types)
            if settings.multiplex and self.own_sessions
            else None
        )
        self._background: set[asyncio.Future[Any]] = set()
        self._inflight: dict[str, set[Guard]] = {n.name: set() for n in cluster.nodes}
        cluster.on_node_lost.append(self._sever)

    def _sever(self, node: Node) -> None:
        """The node is down or fenced: fail its in-flight requests now (reads retry)."""
        for guard in list(self._inflight.get(node.name, ())):
            guard.sever()
        if self.mux is not None:
            self.mux.sever(node, psycopg.OperationalError(f"{node.name} was lost"))

    @asynccontextmanager
    async def _session(
        self, intent: Intent, role: str | None, avoid: Collection[str] = ()
    ) -> AsyncIterator[Checkout]:
        """A pooled connection of the key's login on the node serving `intent`, restored
        before it goes back if the request may have changed its session."""
        node = self.cluster.pick(intent, avoid)
        held = await checkout.take(
            self.cluster, node, role, self.settings.pool_timeout, self.own_sessions
        )
        try:
            yield held
        finally:
            await held.give_back()

    def _guard(self, timeout_ms: int, abort: Abort | None) -> Guard:
        return Guard(timeout_ms / 1000 + DEADLINE_GRACE_S, timeout_ms, abort)

    async def run(self, bound: BoundSQL, limits: Limits, abort: Abort | None = None) -> Outcome:
        """Run one statement and fetch up to max_rows rows; the client leaving cancels it.

        A read-only request whose node fails mid-flight is retried once on another node
        within the same deadline; a write never is (it may have committed).
        """
        intent: Intent = "read" if limits.read_only else "write"
        plain = (
            self.own_sessions
            and not limits.read_only
            and limits.timeout_ms == self.settings.statement_timeout_ms
            and not limits.text_output
            and not session.reads_sequence_state(bound.tree)
        )
        started = time.perf_counter()
        async with self._guard(limits.timeout_ms, abort) as guard:
            try:
                node, result = await self._attempt(bound, limits, intent, plain, guard, ())
            except NodeFailed as exc:
                if intent == "write" or guard.expired:
                    raise
                avoid = [exc.extra["node"]]
                node, result = await self._attempt(bound, limits, intent, plain, guard, avoid)
        return Outcome([result], node, _ms_since(started))

    async def _attempt(
        self,
        bound: BoundSQL,
        limits: Limits,
        intent: Intent,
        plain: bool,
        guard: Guard,
        avoid: Collection[str],
    ) -> tuple[str, StatementResult]:
        # The hot path: no context-manager machinery, one round trip for a plain request.
        node = self.cluster.pick(intent, avoid)
        if (
            plain
            and limits.role is None
            and self.mux is not None
            and self.mux.known.quick(limits.key, bound.sql)
        ):
            return node.name, await self._multiplexed(node, bound, limits)
        inflight = self._inflight[node.name]
        inflight.add(guard)
        try:
            held = await checkout.take(
                self.cluster, node, limits.role, self.settings.pool_timeout, self.own_sessions
            )
        except BaseException as exc:
            inflight.discard(guard)
            if isinstance(exc, asyncio.CancelledError) and guard.take_severance():
                raise NodeFailed(
                    f"{node.name} was lost while waiting for it", node=node.name
                ) from None
            raise
        conn = held.conn
        guard.use(conn)
        try:
            run = self._plain if plain else self._wrapped
            result = await run(held, bound, limits)
        except OSError as exc:  # the socket broke under libpq (shut by a deadline, ...)
            raise await self._failure(
                psycopg.OperationalError(str(exc)), conn, node.name, intent
            ) from None
        except psycopg.Error as exc:
            await _rollback(conn)
            if isinstance(exc, _StatementFailed):
                exc = exc.cause
            raise await self._failure(exc, conn, node.name, intent) from None
        finally:
            inflight.discard(guard)
            guard.use(None)
            await held.give_back()
        return node.name, result

    async def _plain(self, held: Checkout, bound: BoundSQL, limits: Limits) -> StatementResult:
        """One round trip in autocommit; how long it took tells the lanes if it is quick."""
        started = time.perf_counter()
        held.mark(session.effect(bound.tree))
        command = [Command(bound.sql, bound.params)]
        (unit,) = await pipeline.run_units(held.conn, [command])
        if unit.stale:  # our prepared statement was gone or planned for an older schema
            (unit,) = await pipeline.run_units(held.conn, [command])
        (reply,) = unit.replies
        if reply.error is not None:
            raise reply.error
        assert reply.result is not None
        result = await pipeline.answer(
            held.conn, held.node.name, self.types, reply.result, limits.max_rows, limits.row_format
        )
        if self.mux is not None and limits.role is None:
            self.mux.known.observe(limits.key, bound.tree, bound.sql, time.perf_counter() - started)
        return result

    async def _wrapped(self, held: Checkout, bound: BoundSQL, limits: Limits) -> StatementResult:
        """Read-only or own timeout: the statement in a transaction of its own."""
        if self.own_sessions:  # BEGIN, limits, statement, end in one round trip
            (result,) = await self._pipelined(held, [bound], limits, None)
            return result
        conn = held.conn
        await conn.execute(
            self._begin(limits.read_only, None, limits.timeout_ms, [bound], limits.text_output)
        )
        result = await self._statement(held, bound, limits)
        for statement in session.closing(None, limits.read_only):
            await conn.execute(statement)
        return result

    async def _multiplexed(self, node: Node, bound: BoundSQL, limits: Limits) -> StatementResult:
        """Run a quick plain statement through the node's lane. Its deadline and its
        client's leaving are the guard's: this request stops waiting, the batch goes on."""
        assert self.mux is not None
        try:
            return await self.mux.run(
                node,
                limits.key,
                bound.sql,
                bound.tree,
                bound.params,
                limits.max_rows,
                limits.row_format,
            )
        except psycopg.Error as exc:
            raise await self._failure(exc, None, node.name, "write") from None

    async def _failure(
        self,
        exc: psycopg.Error,
        conn: AsyncConnection[Any] | None,
        node: str,
        intent: Intent,
        index: int | None = None,
    ) -> MirrorpoolError:
        """The error to raise for `exc`. A sign that the node failed, or was turned into a
        standby under us (25006 on a write), makes the monitor look at it at once."""
        error = database_error(exc, node, statement_index=index)
        demoted = (
            intent == "write" and exc.sqlstate == "25006" and await self._in_recovery(node, conn)
        )
        if isinstance(error, NodeFailed) or demoted:
            target = self.cluster.node(node)
            if target is not None:
                self.cluster.report_failure(target)
        if demoted:
            return NoWriterError(
                f"{node} no longer accepts writes (it is a standby); retry shortly"
            )
        return error

    async def _in_recovery(self, node: str, conn: AsyncConnection[Any] | None) -> bool:
        """pg_is_in_recovery() on this connection, or on one of the node's pool."""
        if conn is not None:
            return await _in_recovery(conn)
        target = self.cluster.node(node)
        if target is None:
            return False
        try:
            async with target.pool.connection(timeout=self.settings.pool_timeout) as other:
                return await _in_recovery(other)
        except Exception:
            return False

    async def transaction(
        self,
        statements: list[BoundSQL],
        *,
        isolation: Isolation,
        read_only: bool,
        timeout_ms: int,
        max_rows: int,
        row_format: RowFormat,
        role: str | None = None,
        abort: Abort | None = None,
        deferrable: bool = False,
        text_output: bool = False,
    ) -> Outcome:
        """Run statements all-or-nothing; a failure names the statement and rolls back."""
        limits = Limits(timeout_ms, max_rows, read_only, row_format, role, text_output=text_output)
        intent: Intent = "read" if read_only else "write"
        started = time.perf_counter()
        results: list[StatementResult] = []
        async with (
            self._guard(timeout_ms, abort) as guard,
            self._session(intent, role) as held,
        ):
            conn, node = held.conn, held.node.name
            guard.use(conn)
            inflight = self._inflight[node]
            inflight.add(guard)
            try:
                if self.own_sessions:
                    results = await self._pipelined(held, statements, limits, isolation, deferrable)
                else:
                    await conn.execute(
                        self._begin(
                            read_only, isolation, timeout_ms, statements, text_output, deferrable
                        )
                    )
                    for bound in statements:
                        results.append(await self._statement(held, bound, limits))
                    for statement in session.closing(isolation, read_only):
                        await conn.execute(statement)
            except psycopg.Error as exc:
                await _rollback(conn)
                if isinstance(exc, _StatementFailed):
                    index, exc = exc.index, exc.cause
                elif self.own_sessions:  # the connection failed: no statement is to blame
                    index = None
                else:
                    index = len(results) if len(results) < len(statements) else None
                raise await self._failure(exc, conn, node, intent, index) from None
            finally:
                inflight.discard(guard)
                guard.use(None)
        return Outcome(results, node, _ms_since(started))

    async def _pipelined(
        self,
        held: Checkout,
        statements: list[BoundSQL],
        limits: Limits,
        isolation: Isolation | None,
        deferrable: bool = False,
    ) -> list[StatementResult]:
        """BEGIN, the limits, every statement and the transaction's end in one round trip
        (pipeline mode: the statements cannot use each other's results, so nothing waits for
        them). A read-only transaction is rolled back, never committed (session.closing)."""
        conn = held.conn
        # Marked before anything runs: a statement that fails, or whose answer cannot be
        # made, may have changed the session all the same (a ROLLBACK does not undo a
        # PREPARE, a session lock or the random seed).
        for bound in statements:
            held.mark(session.effect(bound.tree))
        values = [str(limits.timeout_ms), str(self.settings.lock_timeout_ms)]
        opening = [
            *(
                [Command("DISCARD SEQUENCES", prepare=False)]
                if any(session.reads_sequence_state(b.tree) for b in statements)
                else []
            ),
            *(
                Command(sql, prepare=False)
                for sql in session.opening(isolation, limits.read_only, deferrable)
            ),
            Command(
                text_output.LIMITS_AND_STYLES_SQL
                if limits.text_output
                else session.LOCAL_LIMITS_SQL,
                values,
                prepare=False,
            ),
        ]
        first = len(opening)
        prepare = not any(session.sets_anything(b.tree) for b in statements)
        styles = text_output.STYLES if limits.text_output else ""
        commands = [
            *opening,
            *(Command(b.sql, b.params, prepare=prepare, styles=styles) for b in statements),
            *(Command(sql, prepare=False) for sql in session.closing(isolation, limits.read_only)),
        ]
        for attempt in (1, 2):
            (unit,) = await pipeline.run_units(conn, [commands])
            replies = unit.replies
            failed = next((i for i, r in enumerate(replies) if r.error is not None), None)
            if failed is None:
                break
            if unit.stale and attempt == 1:
                # A prepared statement was gone or planned for an older schema: the
                # transaction failed before it ran and is rolled back; run it once more.
                await _rollback(conn)
                continue
            error = replies[failed].error
            assert error is not None
            index = failed - first if first <= failed < first + len(statements) else None
            raise _StatementFailed(error, index)
        results = []
        node = held.node.name
        for reply in replies[first : first + len(statements)]:
            assert reply.result is not None
            if limits.text_output:
                results.append(text_output.answer(reply.result, limits.max_rows))
                continue
            answer = await pipeline.answer(
                conn, node, self.types, reply.result, limits.max_rows, limits.row_format
            )
            results.append(answer)
        return results

    async def stream(
        self, bound: BoundSQL, limits: Limits, chunk_rows: int
    ) -> AsyncGenerator[tuple[str, Any]]:
        """Yield ("node", name), ("columns", [...]), ("rows", [...])..., ("end", result).

        Rows come in chunks of `chunk_rows` straight from the server (libpq's chunked mode),
        so memory stays flat whatever the size of the result. A producer task owns the
        connection and hands chunks over a short queue: the consumer can give up at the
        deadline, or when its client leaves, without waiting for the server.
        """
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=2)
        producer = asyncio.ensure_future(self._produce(bound, limits, chunk_rows, queue))
        deadline = time.monotonic() + limits.timeout_ms / 1000 + DEADLINE_GRACE_S
        try:
            while True:
                try:
                    kind, payload = await asyncio.wait_for(
                        queue.get(), max(0.0, deadline - time.monotonic())
                    )
                except TimeoutError:
                    raise QueryTimeout(
                        f"the statement did not finish within {limits.timeout_ms} ms",
                        sqlstate="57014",
                    ) from None
                if kind == "error":
                    raise payload
                yield kind, payload
                if kind == "end":
                    return
        finally:
            if not producer.done():
                self._abandon(producer)

    async def _produce(
        self,
        bound: BoundSQL,
        limits: Limits,
        chunk_rows: int,
        queue: asyncio.Queue[tuple[str, Any]],
    ) -> None:
        intent: Intent = "read" if limits.read_only else "write"
        try:
            async with self._session(intent, limits.role) as held:
                conn, node = held.conn, held.node.name
                await queue.put(("node", node))
                held.mark(session.effect(bound.tree))
                try:
                    await conn.execute(
                        self._begin(limits.read_only, None, limits.timeout_ms, [bound])
                    )
                    # The stream holds its connection until its last row: type names the
                    # node has not met are looked up now, before it starts.
                    fields = await pipeline.describe(conn, bound.sql, bound.params)
                    await self.types.columns(conn, node, [Field(n, oid) for n, oid in fields])
                    cur = conn.cursor()
                    sent_columns = False
                    batch: list[Any] = []
                    count = 0
                    async for row in cur.stream(bound.sql, bound.params, size=chunk_rows):
                        if not sent_columns:
                            columns = self.types.as_known(conn, node, cur.description)
                            await queue.put(("columns", columns))
                            sent_columns = True
                        batch.append(row)
                        if len(batch) >= chunk_rows:
                            count += len(batch)
                            await queue.put(("rows", batch))
                            batch = []
                    if not sent_columns:
                        columns = await self.types.columns(conn, node, cur.description)
                        await queue.put(("columns", columns))
                    count += len(batch)
                    if batch:
                        await queue.put(("rows", batch))
                    command = cur.statusmessage or streamed_tag(bound.tree, count)
                    for statement in session.closing(None, limits.read_only):
                        await conn.execute(statement)
                except psycopg.Error as exc:
                    await _rollback(conn)
                    raise await self._failure(exc, conn, node, intent) from None
            await queue.put(
                ("end", StatementResult([], [], command, affected(command, None, count)))
            )
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put(("error", exc))

    def _begin(
        self,
        read_only: bool,
        isolation: Isolation | None,
        timeout_ms: int,
        statements: list[BoundSQL],
        text: bool = False,
        deferrable: bool = False,
    ) -> Any:
        local = self._local_settings
        if text:  # Limits.text_output, behind PgBouncer: SET LOCAL, gone with the transaction
            local = {**(local or {}), **text_output.POSTGRES_STYLES}
        return session.begin_sql(
            read_only=read_only,
            isolation=isolation,
            timeout_ms=timeout_ms,
            lock_timeout_ms=self.settings.lock_timeout_ms,
            local_settings=local,
            discard_sequences=any(session.reads_sequence_state(b.tree) for b in statements),
            deferrable=deferrable,
        )

    async def _statement(self, held: Checkout, bound: BoundSQL, limits: Limits) -> StatementResult:
        conn, node = held.conn, held.node.name
        held.mark(session.effect(bound.tree))
        cur = conn.cursor()
        # Behind PgBouncer nothing is prepared by name (prepare_threshold is off).
        await cur.execute(bound.sql, bound.params)
        if limits.text_output and cur.pgresult is not None:
            return text_output.answer(cur.pgresult, limits.max_rows)
        command = cur.statusmessage
        if cur.description is None:
            return StatementResult([], [], command, affected(command, cur.rowcount, 0))
        rows = await cur.fetchmany(limits.max_rows + 1)
        columns = await self.types.of_result(conn, node, cur.pgresult)
        return statement_result(
            columns, rows, command, cur.rowcount, limits.max_rows, limits.row_format
        )

    async def with_deadline(
        self, work: Awaitable[T], timeout_ms: int, abort: Abort | None = None
    ) -> T:
        """Await `work`, giving up at the deadline, or when `abort` finishes, without waiting.

        Giving up cancels the work in the background: psycopg then asks the server to cancel
        the statement and the pool gets the connection back (or drops it when the server does
        not answer), while the caller already has its answer.
        """
        task = asyncio.ensure_future(work)
        waits: set[asyncio.Future[Any]] = {task}
        watcher = asyncio.ensure_future(abort()) if abort is not None else None
        if watcher is not None:
            waits.add(watcher)
        try:
            done, _ = await asyncio.wait(
                waits, timeout=timeout_ms / 1000 + DEADLINE_GRACE_S, return_when="FIRST_COMPLETED"
            )
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
        if task in done:
            return task.result()
        self._abandon(task)
        if watcher is not None and watcher in done:
            raise ClientGone("the client disconnected; the statement was cancelled")
        raise QueryTimeout(f"the statement did not finish within {timeout_ms} ms", sqlstate="57014")

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        task.cancel()
        self._background.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()


async def _in_recovery(conn: AsyncConnection[Any]) -> bool:
    """pg_is_in_recovery() on this connection; False when it cannot tell."""
    try:
        cur = await conn.execute("SELECT pg_is_in_recovery()")
        row = await cur.fetchone()
    except psycopg.Error:
        return False
    return bool(row and row[0])


async def _rollback(conn: AsyncConnection[Any]) -> None:
    """Leave the connection idle after an error, if it still works at all."""
    if conn.closed:
        return
    status = conn.info.transaction_status
    if status in (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR):
        try:
            await conn.execute("ROLLBACK")
        except psycopg.Error:
            await conn.close()


class _StatementFailed(psycopg.Error):
    """A pipelined transaction failed: the error, and which statement raised it (if one)."""

    def __init__(self, cause: psycopg.Error, index: int | None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.index = index


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
