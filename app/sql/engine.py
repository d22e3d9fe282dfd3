"""The query engine: runs statements on the right node within their limits and deadline.

A plain request (default timeout, may write) is one round trip: the statement runs in
autocommit on a pooled connection whose session already carries the default timeouts. A
read-only request, or one with its own timeout, runs as BEGIN [READ ONLY] + SET LOCAL (one
simple query), the statement, COMMIT. The deadline is enforced here too, not only by the
server's statement_timeout: a frozen server cannot hold a request past it.
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
from app.sql import pipeline, session
from app.sql.columns import TypeNames
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
        self, intent: Intent, avoid: Collection[str] = ()
    ) -> AsyncIterator[tuple[str, AsyncConnection[Any], Callable[[], None]]]:
        """A pooled connection, reset before it goes back if the request dirtied it."""
        dirty = False

        def mark_dirty() -> None:
            nonlocal dirty
            dirty = True

        timeout = self.settings.pool_timeout
        async with self.cluster.connection(intent, timeout, avoid) as (node, conn):
            before = session.snapshot(conn)
            try:
                yield node.name, conn, mark_dirty
            finally:
                if (
                    self.own_sessions
                    and (dirty or session.snapshot(conn) != before)
                    and not conn.closed
                ):
                    await session.reset(conn)

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
            and limits.role is None
            and limits.timeout_ms == self.settings.statement_timeout_ms
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
        if plain and self.mux is not None and self.mux.known.quick(bound.sql):
            return node.name, await self._multiplexed(node, bound, limits)
        inflight = self._inflight[node.name]
        inflight.add(guard)
        try:
            conn = await self.cluster.getconn(node, self.settings.pool_timeout)
        except BaseException as exc:
            inflight.discard(guard)
            if isinstance(exc, asyncio.CancelledError) and guard.take_severance():
                raise NodeFailed(
                    f"{node.name} was lost while waiting for it", node=node.name
                ) from None
            raise
        before = session.snapshot(conn)
        dirty = False

        def mark_dirty() -> None:
            nonlocal dirty
            dirty = True

        guard.use(conn)
        try:
            run = self._plain if plain else self._wrapped
            result = await run(conn, node.name, bound, limits, mark_dirty)
        except psycopg.Error as exc:
            await _rollback(conn)
            if isinstance(exc, _StatementFailed):
                exc = exc.cause
            raise await self._failure(exc, conn, node.name, intent) from None
        finally:
            inflight.discard(guard)
            guard.use(None)
            try:
                if (
                    self.own_sessions
                    and (dirty or session.snapshot(conn) != before)
                    and not conn.closed
                ):
                    await session.reset(conn)
            finally:
                await node.pool.putconn(conn)
        return node.name, result

    async def _plain(
        self,
        conn: AsyncConnection[Any],
        node: str,
        bound: BoundSQL,
        limits: Limits,
        mark_dirty: Callable[[], None],
    ) -> StatementResult:
        """One round trip in autocommit; how long it took tells the lanes if it is quick."""
        dirtied = False

        def mark() -> None:
            nonlocal dirtied
            dirtied = True
            mark_dirty()

        started = time.perf_counter()
        result = await self._statement(conn, node, bound, limits, mark)
        if self.mux is not None:
            if dirtied:
                self.mux.known.forget(bound.sql)
            else:
                self.mux.known.observe(bound.sql, time.perf_counter() - started)
        return result

    async def _wrapped(
        self,
        conn: AsyncConnection[Any],
        node: str,
        bound: BoundSQL,
        limits: Limits,
        mark_dirty: Callable[[], None],
    ) -> StatementResult:
        """Read-only, own timeout or role: the statement in a transaction of its own."""
        if self.own_sessions:  # BEGIN, limits, statement, COMMIT in one round trip
            (result,) = await self._pipelined(conn, node, [bound], limits, None, mark_dirty)
            return result
        await conn.execute(self._begin(limits.read_only, None, limits.timeout_ms, limits.role))
        result = await self._statement(conn, node, bound, limits, mark_dirty)
        await conn.execute("COMMIT")
        return result

    async def _multiplexed(self, node: Node, bound: BoundSQL, limits: Limits) -> StatementResult:
        """Run a quick plain statement through the node's lane. Its deadline and its
        client's leaving are the guard's: this request stops waiting, the batch goes on."""
        assert self.mux is not None
        try:
            return await self.mux.run(
                node, bound.sql, bound.params, limits.max_rows, limits.row_format
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
    ) -> Outcome:
        """Run statements all-or-nothing; a failure names the statement and rolls back."""
        limits = Limits(timeout_ms, max_rows, read_only, row_format, role)
        intent: Intent = "read" if read_only else "write"
        started = time.perf_counter()
        results: list[StatementResult] = []
        async with (
            self._guard(timeout_ms, abort) as guard,
            self._session(intent) as (node, conn, dirty),
        ):
            guard.use(conn)
            inflight = self._inflight[node]
            inflight.add(guard)
            try:
                if self.own_sessions:
                    results = await self._pipelined(
                        conn, node, statements, limits, isolation, dirty
                    )
                else:
                    await conn.execute(self._begin(read_only, isolation, timeout_ms, role))
                    for bound in statements:
                        results.append(await self._statement(conn, node, bound, limits, dirty))
                    await conn.execute("COMMIT")
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
        conn: AsyncConnection[Any],
        node: str,
        statements: list[BoundSQL],
        limits: Limits,
        isolation: Isolation | None,
        mark_dirty: Callable[[], None],
    ) -> list[StatementResult]:
        """BEGIN, the limits, every statement and COMMIT in one round trip (pipeline mode:
        the statements cannot use each other's results, so nothing waits for them)."""
        limits_sql = session.LOCAL_LIMITS_SQL
        values = [str(limits.timeout_ms), str(self.settings.lock_timeout_ms)]
        if limits.role is not None:
            limits_sql, values = session.LOCAL_LIMITS_AS_ROLE_SQL, [*values, limits.role]
        commands = [
            Command(session.begin_statement(isolation, limits.read_only), prepare=False),
            Command(limits_sql, values, prepare=False),
            *(Command(b.sql, b.params) for b in statements),
            Command("COMMIT", prepare=False),
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
            index = failed - 2 if 2 <= failed < 2 + len(statements) else None
            raise _StatementFailed(error, index)
        results = []
        for bound, reply in zip(statements, replies[2:-1], strict=True):
            assert reply.result is not None
            answer = await pipeline.answer(
                conn, node, self.types, reply.result, limits.max_rows, limits.row_format
            )
            if session.may_dirty(bound.sql, answer.command):
                mark_dirty()
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
            async with self._session(intent) as (node, conn, mark_dirty):
                await queue.put(("node", node))
                try:
                    await conn.execute(
                        self._begin(limits.read_only, None, limits.timeout_ms, limits.role)
                    )
                    cur = conn.cursor()
                    sent_columns = False
                    batch: list[Any] = []
                    count = 0
                    async for row in cur.stream(bound.sql, bound.params, size=chunk_rows):
                        if not sent_columns:
                            columns = await self.types.columns(conn, node, cur.description)
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
                    await conn.execute("COMMIT")
                except psycopg.Error as exc:
                    await _rollback(conn)
                    raise await self._failure(exc, conn, node, intent) from None
                if session.may_dirty(bound.sql, cur.statusmessage):
                    mark_dirty()
            command = cur.statusmessage or streamed_tag(bound.sql, count)
            await queue.put(
                ("end", StatementResult([], [], command, affected(command, None, count)))
            )
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put(("error", exc))

    def _begin(
        self, read_only: bool, isolation: Isolation | None, timeout_ms: int, role: str | None
    ) -> Any:
        return session.begin_sql(
            read_only=read_only,
            isolation=isolation,
            timeout_ms=timeout_ms,
            lock_timeout_ms=self.settings.lock_timeout_ms,
            role=role,
            local_settings=self._local_settings,
        )

    async def _statement(
        self,
        conn: AsyncConnection[Any],
        node: str,
        bound: BoundSQL,
        limits: Limits,
        mark_dirty: Callable[[], None],
    ) -> StatementResult:
        cur = conn.cursor()
        await cur.execute(bound.sql, bound.params)
        command = cur.statusmessage
        if session.may_dirty(bound.sql, command):
            mark_dirty()
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
