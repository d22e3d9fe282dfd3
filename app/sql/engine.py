"""The query engine: runs statements on the right node within their limits and deadline.

A plain request (default timeout, may write) is one round trip: the statement runs in
autocommit on a pooled connection whose session already carries the default timeouts. A
read-only request, or one with its own timeout, runs as BEGIN [READ ONLY], the limits, the
statement and its end (COMMIT; a read-only one is rolled back), pipelined in one round trip.
Every request runs on a connection of its key's login (app/sql/checkout.py). The deadline is
enforced here too, not only by the server's statement_timeout: a frozen server cannot hold
a request past it. Rows are read in chunks and kept up to max_rows + 1 within the response
bytes (app/sql/pipeline.py Keep); a read over that whose end loses nothing is cancelled on
the server (_stoppable), anything else has the rest of its rows read and dropped.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection

from app.cluster.cluster import Cluster, Intent
from app.cluster.failover import demoted_writer, may_be_demoted
from app.cluster.node import Node
from app.errors import (
    ClientGone,
    InvalidSQL,
    MirrorpoolError,
    NodeFailed,
    NoWriterError,
    QueryTimeout,
    ResultTooLarge,
)
from app.settings import Settings
from app.sql import checkout, pipeline, session, text_output
from app.sql.checkout import Checkout
from app.sql.columns import Field, TypeNames
from app.sql.errors import database_error
from app.sql.guard import DEADLINE_GRACE_S, Guard
from app.sql.multiplex import Multiplexer
from app.sql.pipeline import Allowance, Command, Keep
from app.sql.placeholders import BoundSQL
from app.sql.results import RowFormat, StatementResult, affected, streamed_tag
from app.sql.session import Isolation
from app.sql.tree import NO_ROWS_TO_STREAM, returns_rows
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
    # Served by a node that was not the writer (a mirror, or any node while none takes writes).
    from_mirror: bool = False


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
        # No key holds more than its share of a pool (app/cluster/share.py); with one key or
        # none (auth disabled) there is no other key to share with.
        self.shares = (
            settings.auth == "keys"
            and settings.key_max_pool_share < 1
            and len(settings.all_api_keys()) > 1
        )
        self.mux = (
            Multiplexer(cluster, settings, self.types, self.shares)
            if settings.multiplex and self.own_sessions
            else None
        )
        self._background: set[asyncio.Future[Any]] = set()
        self._inflight: dict[str, set[Guard]] = {n.name: set() for n in cluster.nodes}
        cluster.node_lost.connect(self._sever)

    def _sever(self, node: Node) -> None:
        """The node is down or fenced: fail its in-flight requests now (reads retry)."""
        for guard in list(self._inflight.get(node.name, ())):
            guard.sever()
        if self.mux is not None:
            self.mux.sever(node, psycopg.OperationalError(f"{node.name} was lost"))

    @asynccontextmanager
    async def _session(
        self, intent: Intent, role: str | None, key: str, avoid: Collection[str] = ()
    ) -> AsyncIterator[Checkout]:
        """A pooled connection of the key's login on the node serving `intent`, within the
        key's share of the pool, restored before it goes back if the request may have
        changed its session."""
        node = self.cluster.pick(intent, avoid)
        held = await self._take(node, role, key)
        try:
            yield held
        finally:
            await held.give_back()

    async def _take(self, node: Node, role: str | None, key: str) -> Checkout:
        return await checkout.take(
            self.cluster,
            node,
            role,
            self.settings.pool_timeout,
            self.own_sessions,
            key if self.shares else "",
        )

    def _guard(self, timeout_ms: int, abort: Abort | None) -> Guard:
        return Guard(timeout_ms / 1000 + DEADLINE_GRACE_S, timeout_ms, abort)

    async def run(self, bound: BoundSQL, limits: Limits, abort: Abort | None = None) -> Outcome:
        """Run one statement and fetch up to max_rows rows; the client leaving cancels it.

        A read-only request whose node fails mid-flight is retried once on another node
        within the same deadline; a write never is (it may have committed).
        """
        intent: Intent = "read" if limits.read_only else "write"
        # A statement the parser shows to be a pure read is served by a mirror while no node
        # takes writes, and retried on another node like a read_only one: it changed nothing
        # that a second run would repeat.
        pure = limits.read_only or (
            self.settings.plain_reads_from_mirror and session.pure_read(bound.tree)
        )
        if pure and self.cluster.writer is None:
            intent = "read"
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
                if not pure or guard.expired:
                    raise
                avoid = [exc.extra["node"]]
                node, result = await self._attempt(bound, limits, "read", plain, guard, avoid)
        writer = self.cluster.writer
        from_mirror = writer is None or writer.name != node
        return Outcome([result], node, _ms_since(started), from_mirror=from_mirror)

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
            held = await self._take(node, limits.role, limits.key)
        except BaseException as exc:
            inflight.discard(guard)
            if isinstance(exc, asyncio.CancelledError) and guard.take_severance():
                raise NodeFailed(
                    f"{node.name} was lost while waiting for it", node=node.name
                ) from None
            raise
        conn = held.conn
        guard.use(held)
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
        """One round trip in autocommit; how long it took tells the lanes if it is quick.

        A read over its limit is stopped on the server; a write's rows beyond it are read
        and dropped (stopping it would undo it)."""
        started = time.perf_counter()
        held.mark(session.effect(bound.tree))
        keep = self._keep(limits, session.pure_read(bound.tree))
        command = [Command(bound.sql, bound.params, keep=keep)]
        (unit,) = await pipeline.run_units(held.conn, [command])
        if unit.stale:  # our prepared statement was gone or planned for an older schema
            command = [Command(bound.sql, bound.params, keep=self._keep(limits, keep.stop))]
            (unit,) = await pipeline.run_units(held.conn, [command])
        (reply,) = unit.replies
        if reply.error is not None:
            raise reply.error
        if reply.oversized:
            held.mark(session.Effect.CLOSE)
        result = await pipeline.answer(
            held.conn, held.node.name, self.types, reply, limits.max_rows, limits.row_format
        )
        if self.mux is not None and limits.role is None:
            # A text that had to be stopped stays out of the lanes: stopping it there costs
            # its neighbours a cancel.
            seconds = math.inf if reply.stopped else time.perf_counter() - started
            self.mux.known.observe(limits.key, bound.tree, bound.sql, seconds)
        return result

    def _keep(self, limits: Limits, stop: bool, allowance: Allowance | None = None) -> Keep:
        """What to keep of a statement's rows: max_rows + 1 (the one more says it was cut),
        within the request's bytes (MIRRORPOOL_MAX_RESPONSE_BYTES)."""
        if allowance is None:
            allowance = Allowance(self.settings.max_response_bytes)
        return Keep(limits.max_rows + 1, allowance, stop, text=limits.text_output)

    async def _wrapped(self, held: Checkout, bound: BoundSQL, limits: Limits) -> StatementResult:
        """Read-only or own timeout: the statement in a transaction of its own."""
        if self.own_sessions:  # BEGIN, limits, statement, end in one round trip
            (result,) = await self._pipelined(held, [bound], limits, None)
            return result
        conn = held.conn
        await conn.execute(
            self._begin(limits.read_only, None, limits.timeout_ms, [bound], limits.text_output)
        )
        stop = _stoppable([bound], None, limits.read_only)
        result = await self._statement(held, bound, self._keep(limits, stop), limits)
        await _end_unless_cut(conn, result.truncated, None, limits.read_only, limits.text_output)
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
        demoted = intent == "write" and demoted_writer(
            exc.sqlstate,
            await self._in_recovery(node, conn) if may_be_demoted(exc.sqlstate) else None,
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
        key: str = "",
        deferrable: bool = False,
        text_output: bool = False,
    ) -> Outcome:
        """Run statements all-or-nothing; a failure names the statement and rolls back."""
        limits = Limits(
            timeout_ms, max_rows, read_only, row_format, role, key, text_output=text_output
        )
        intent: Intent = "read" if read_only else "write"
        started = time.perf_counter()
        results: list[StatementResult] = []
        async with (
            self._guard(timeout_ms, abort) as guard,
            self._session(intent, role, key) as held,
        ):
            conn, node = held.conn, held.node.name
            guard.use(held)
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
                    allowance = Allowance(self.settings.max_response_bytes)
                    stop = _stoppable(statements, isolation, read_only)
                    for position, bound in enumerate(statements):
                        last = position == len(statements) - 1
                        keep = self._keep(limits, stop and last, allowance)
                        results.append(await self._statement(held, bound, keep, limits))
                    cut = any(r.truncated for r in results)
                    await _end_unless_cut(conn, cut, isolation, read_only, text_output)
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
        # The last statement over its limit may be stopped on the server when ending the
        # transaction there loses nothing (_stoppable).
        stop = _stoppable(statements, isolation, limits.read_only)
        last = len(statements) - 1
        styles = text_output.STYLES if limits.text_output else ""
        # Text answers (POST /sql) over the limits fail (507) instead of arriving cut: a
        # transaction that may write is ended only once its answers are known to fit.
        end_later = limits.text_output and not limits.read_only
        for attempt in (1, 2):
            allowance = Allowance(self.settings.max_response_bytes)
            commands = [
                *opening,
                *(
                    Command(
                        b.sql,
                        b.params,
                        prepare=prepare,
                        keep=self._keep(limits, stop and i == last, allowance),
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
            (unit,) = await pipeline.run_units(conn, [commands])
            replies = unit.replies
            # After a statement stopped on the server the transaction's end failed, or
            # did not run: it only held reads, and is rolled back.
            stopped = next((i for i, r in enumerate(replies) if r.stopped), len(replies))
            failed = next((i for i, r in enumerate(replies[:stopped]) if r.error is not None), None)
            if failed is None:
                if stopped < len(replies):
                    await _rollback(conn)
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
        if end_later:
            cut = any(r.cut for r in replies[first : first + len(statements)])
            await _end_unless_cut(conn, cut, isolation, limits.read_only, limits.text_output)
        results = []
        node = held.node.name
        for reply in replies[first : first + len(statements)]:
            if reply.oversized:
                held.mark(session.Effect.CLOSE)
            if limits.text_output:
                results.append(text_output.from_reply(reply, limits.max_rows))
                continue
            answer = await pipeline.answer(
                conn, node, self.types, reply, limits.max_rows, limits.row_format
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
        deadline, or when its client leaves or stops reading, without waiting for the
        server; the producer's guard then ends the statement and its transaction there.
        """
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=2)
        guard = self._guard(limits.timeout_ms, None)
        producer = asyncio.ensure_future(self._produce(bound, limits, chunk_rows, queue, guard))
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
                self._abandon(producer)

    async def _produce(
        self,
        bound: BoundSQL,
        limits: Limits,
        chunk_rows: int,
        queue: asyncio.Queue[tuple[str, Any]],
        guard: Guard,
    ) -> None:
        intent: Intent = "read" if limits.read_only else "write"
        try:
            async with guard, self._session(intent, limits.role, limits.key) as held:
                guard.use(held)
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
                    if not fields and returns_rows(bound.tree) is None:
                        # The server's description, where the tree cannot tell (a CALL of
                        # a procedure without OUT parameters): nothing has run yet.
                        await _rollback(conn)
                        raise InvalidSQL(NO_ROWS_TO_STREAM)
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

    async def _statement(
        self, held: Checkout, bound: BoundSQL, keep: Keep, limits: Limits
    ) -> StatementResult:
        """One statement of a transaction behind PgBouncer, read in chunks like the rest
        (one unit, nothing prepared: a pooler's server connections are not ours)."""
        conn, node = held.conn, held.node.name
        held.mark(session.effect(bound.tree))
        command = Command(bound.sql, bound.params, prepare=False, keep=keep)
        (unit,) = await pipeline.run_units(conn, [[command]])
        (reply,) = unit.replies
        if reply.error is not None:
            raise reply.error
        if reply.oversized:
            held.mark(session.Effect.CLOSE)
        if limits.text_output:
            return text_output.from_reply(reply, limits.max_rows)
        return await pipeline.answer(
            conn, node, self.types, reply, limits.max_rows, limits.row_format
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


def _stoppable(statements: list[BoundSQL], isolation: Isolation | None, read_only: bool) -> bool:
    """True when the transaction's last statement may be stopped on the server once it is
    over its limit: ending the transaction there loses nothing (it only reads) and proves
    nothing wrong (a serializable one's reads are proven only by its commit)."""
    if isolation == "serializable":
        return False
    return read_only or all(session.pure_read(b.tree) for b in statements)


_OVER_THE_LIMITS = (
    "a result is over MIRRORPOOL_MAX_ROWS or MIRRORPOOL_MAX_RESPONSE_BYTES; the transaction "
    "was rolled back (select fewer rows with LIMIT)"
)


async def _end_unless_cut(
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
        await _rollback(conn)
        raise ResultTooLarge(_OVER_THE_LIMITS)
    await _end(conn, isolation, read_only)


async def _end(conn: AsyncConnection[Any], isolation: Isolation | None, read_only: bool) -> None:
    """End a transaction behind PgBouncer: as it should end, or rolled back when its last
    statement was stopped on the server (the cancel failed the transaction)."""
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
        await _rollback(conn)
        return
    for statement in session.closing(isolation, read_only):
        await conn.execute(statement)


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
