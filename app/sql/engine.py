"""The query engine: picks the node, takes one checkout, and hands the request to a strategy,
within the request's deadline.

- node choice and the read retry: here (Engine.run);
- the checkout (pool, key's share, session snapshot, reset, return): app/sql/checkout.py;
- the deadline (statement timeout + 1 s, the client leaving): app/sql/guard.py;
- the strategies: a quick plain read joins its node's lane (app/sql/multiplex.py); another
  plain request is one round trip in autocommit (app/sql/plain.py); a read-only request,
  one with its own timeout, and every transaction are pipelined in one round trip
  (app/sql/transactions.py); behind PgBouncer each is a transaction sent statement by
  statement (app/sql/pgbouncer.py); a stream has a producer task of its own
  (app/sql/streaming.py);
- what a failure becomes, and what the cluster is told of it: app/sql/failures.py.

Rows are read in chunks and kept up to max_rows + 1 within the response bytes
(app/sql/pipeline Keep); a read over that whose end loses nothing is cancelled on the server
(transactions.stoppable), anything else has the rest of its rows read and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg

from app.cluster.cluster import Cluster, Intent
from app.cluster.node import Node
from app.errors import MirrorpoolError, NodeFailed, OutcomeUnknown, QueryTimeout
from app.sql import lock_code, pgbouncer, plain, session, transactions
from app.sql.checkout import Checkout, Checkouts
from app.sql.columns import TypeNames
from app.sql.execution import Context, Limits, Outcome, ms_since
from app.sql.failures import Failures, StatementFailed, rollback
from app.sql.guard import Abort, Guard
from app.sql.multiplex import Job, Multiplexer, WaitedForLock
from app.sql.options import EngineOptions, StatementRules
from app.sql.placeholders import BoundSQL
from app.sql.results import RowFormat, StatementResult
from app.sql.schema_watch import SchemaWatch, ask_on
from app.sql.session import Effect, Isolation
from app.sql.streaming import Streams
from app.supervisor import Supervisor

__all__ = ["Abort", "Engine", "Limits", "Outcome"]

T = TypeVar("T")


class Engine:
    """Runs bound statements through the cluster."""

    def __init__(
        self,
        cluster: Cluster,
        options: EngineOptions,
        *,
        supervisor: Supervisor,
        rules: StatementRules,
    ) -> None:
        self.cluster = cluster
        self.options = options
        # What statement.prepare checks requests against (the routes hand it over).
        self.rules = rules
        self.types = TypeNames()
        # What the catalog says of code that runs out of the tree's sight: read at start-up
        # (open()), again after a schema change, and every MIRRORPOOL_SCHEMA_REFRESH_S.
        self.schema = SchemaWatch(self._ask_catalog, options.schema_refresh_s)
        self._schema_task: asyncio.Task[None] | None = None
        self._supervisor = supervisor
        self._ctx = Context(options, self.types, self.schema)
        # False behind a transaction pooler: nothing a pooled connection carries can be
        # relied on (no plain fast path: every request is a transaction that SETs LOCAL
        # what it needs), and nothing may be reset in it.
        self.own_sessions = options.own_sessions
        self.checkouts = Checkouts(
            cluster.backends, options.pool_timeout, options.own_sessions, options.shares
        )
        self._failures = Failures(cluster, self.checkouts)
        # Quick plain statements share connections, pipelined (app/sql/multiplex.py).
        self.mux = (
            Multiplexer(options.lanes, self.checkouts, self.types, supervisor, self.schema)
            if options.multiplex and options.own_sessions
            else None
        )
        self._known = self.mux.known if self.mux is not None else None
        self._streams = Streams(self._ctx, self._failures, supervisor)
        self._inflight: dict[str, set[Guard]] = {n.name: set() for n in cluster.nodes}
        cluster.node_lost.connect(self._sever)

    async def open(self, wait_s: float = 2.0) -> None:
        """Start keeping the catalog's facts fresh. Wait (at most `wait_s` each) for the
        cluster's first writer and the first reading: a worker then answers its first
        requests with a writer known and without resetting every session."""
        await self.cluster.wait_for_writer(wait_s)
        self._schema_task = self._supervisor.spawn(self.schema.run(), name="schema-code")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self.schema.first_read.wait()

    async def close(self) -> None:
        """Stop reading the catalog, before the pools close: a reading holds a pool
        connection, which the pools' close would wait for."""
        task = self._schema_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    async def _ask_catalog(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """A catalog query on a pool connection of the writer (else of any reachable node: a
        mirror's catalog is the primary's). Not on the health monitor's connection: a slow
        reading must never look like a node that stopped answering its probes."""
        nodes = [self.cluster.writer] if self.cluster.writer is not None else []
        nodes += [n for n in self.cluster.nodes if n.state.reachable and n not in nodes]
        if not nodes:
            raise NodeFailed("no node is reachable to read the catalog from")
        async with self.checkouts.session(nodes[0]) as held:
            if self.schema.altered:
                # The catalog's own queries may reach such code too (a cast, an operator):
                # what it leaves goes with the connection.
                held.mark(Effect.CLOSE)
            return await ask_on(held.conn)(query, params)

    @asynccontextmanager
    async def _changing(self, changes: bool) -> AsyncIterator[None]:
        """Around a statement that may change the schema: the catalog's facts are unknown
        from before it starts until read again after it ends (a reading taken while it ran
        may predate its commit)."""
        if changes:
            self.schema.changed()
        try:
            yield
        finally:
            if changes:
                self.schema.changed()

    def _sever(self, node: Node) -> None:
        """The node is down or fenced: fail its in-flight requests now (reads retry)."""
        for guard in list(self._inflight.get(node.name, ())):
            guard.sever()
        if self.mux is not None:
            self.mux.sever(node, psycopg.OperationalError(f"{node.name} was lost"))

    @asynccontextmanager
    async def _session(self, intent: Intent, role: str | None, key: str) -> AsyncIterator[Checkout]:
        """A checkout of the key's login on the node serving `intent`."""
        held = await self.checkouts.take(self.cluster.pick(intent), role, key)
        try:
            yield held
        finally:
            await held.give_back()

    async def run(
        self, bound: BoundSQL, limits: Limits, abort: Abort | None = None, _around: bool = False
    ) -> Outcome:
        """Run one statement and fetch up to max_rows rows; the client leaving cancels it.

        A read-only request whose node fails mid-flight is retried once on another node
        within the same deadline; a write never is (it may have committed).
        """
        if not _around:
            lock_code.check(self.schema.locks, [bound.tree])
        # (a read-only request changes no schema: PostgreSQL refuses it DDL)
        if not _around and not limits.read_only and self.schema.changed_by(bound.tree):
            async with self._changing(True):
                return await self.run(bound, limits, abort, _around=True)
        intent: Intent = "read" if limits.read_only else "write"
        # A statement the parser shows to be a pure read is served by a mirror while no node
        # takes writes, and retried on another node like a read_only one: it changed nothing
        # that a second run would repeat.
        pure = limits.read_only or (
            self.options.plain_reads_from_mirror and self._ctx.pure_read(bound.tree)
        )
        if pure and self.cluster.writer is None:
            intent = "read"
        # Text answers (POST /sql) take the plain path only for pure reads: a write over the
        # limits must fail (507) uncommitted, which only a transaction ended later can do.
        plain_request = (
            self.own_sessions
            and not limits.read_only
            and limits.timeout_ms == self.options.statement_timeout_ms
            and (not limits.text_output or self._ctx.pure_read(bound.tree))
            and not session.reads_sequence_state(bound.tree)
        )
        started = time.perf_counter()
        async with Guard(limits.timeout_ms, abort) as guard:
            try:
                node, result = await self._attempt(bound, limits, intent, plain_request, guard, ())
            except NodeFailed as exc:
                if not pure or guard.expired:
                    raise
                avoid = [exc.extra["node"]]
                node, result = await self._attempt(
                    bound, limits, "read", plain_request, guard, avoid
                )
        writer = self.cluster.writer
        from_mirror = writer is None or writer.name != node
        return Outcome([result], node, ms_since(started), from_mirror=from_mirror)

    async def _attempt(
        self,
        bound: BoundSQL,
        limits: Limits,
        intent: Intent,
        plain_request: bool,
        guard: Guard,
        avoid: Collection[str],
    ) -> tuple[str, StatementResult]:
        # The hot path: no context-manager machinery, one round trip for a plain request.
        node = self.cluster.pick(intent, avoid)
        mux = self.mux
        if (
            plain_request
            and limits.role is None
            and mux is not None
            and mux.known.quick(limits.key, bound.tree, bound.sql)
        ):
            try:
                return node.name, await self._multiplexed(node, bound, limits, guard)
            except WaitedForLock:
                # Undone there; it runs again below, where waiting holds up no one (unless
                # its deadline passed while it was out: then it stays undone).
                if guard.expired:
                    raise QueryTimeout(
                        f"the statement did not finish within {limits.timeout_ms} ms"
                        " (it waited for a lock and was undone)",
                        sqlstate="57014",
                    ) from None

        inflight = self._inflight[node.name]
        inflight.add(guard)
        try:
            held = await self.checkouts.take(node, limits.role, limits.key)
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
            if plain_request:
                result = await plain.run(held, bound, limits, self._ctx, self._known)
            elif self.own_sessions:  # BEGIN, limits, statement, end in one round trip
                (result,) = await transactions.pipelined(held, [bound], limits, None, self._ctx)
            else:
                result = await pgbouncer.run(held, bound, limits, self._ctx)
        except OSError as exc:  # the socket broke under libpq (shut by a deadline, ...)
            error = await self._failures.error(
                psycopg.OperationalError(str(exc)), conn, node.name, intent
            )
            raise _sent_write_lost(error, bound, limits, self._ctx) from None
        except psycopg.Error as exc:
            await rollback(conn)
            if isinstance(exc, StatementFailed):
                exc = exc.cause
            error = await self._failures.error(exc, conn, node.name, intent)
            raise _sent_write_lost(error, bound, limits, self._ctx) from None
        finally:
            inflight.discard(guard)
            guard.use(None)
            await held.give_back()
        return node.name, result

    async def _multiplexed(
        self, node: Node, bound: BoundSQL, limits: Limits, guard: Guard
    ) -> StatementResult:
        """A quick plain statement through the node's lane. A read's deadline and its
        client's leaving are the request's guard's: this request stops waiting, the batch
        goes on. A write not sent by its deadline is dropped the same way; once sent, its
        request waits for its real outcome (Guard.spare), which the server bounds: the write
        runs under what is left of its statement timeout (app/sql/multiplex.py)."""
        assert self.mux is not None
        future: asyncio.Future[StatementResult] = asyncio.get_running_loop().create_future()
        job = Job(
            bound.sql,
            bound.tree,
            bound.params,
            limits.max_rows,
            limits.row_format,
            future,
            timeout_at=time.monotonic() + limits.timeout_ms / 1000,
            text=limits.text_output,
        )
        if job.writes:
            guard.spare(job.in_flight)
        try:
            return await self.mux.run(node, limits.key, job)
        except psycopg.Error as exc:
            raise await self._failures.error(exc, None, node.name, "write") from None
        except OutcomeUnknown:
            self._failures.lost(node.name)
            raise
        finally:
            guard.spare(None)

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
        lock_code.check(self.schema.locks, [b.tree for b in statements])
        limits = Limits(
            timeout_ms, max_rows, read_only, row_format, role, key, text_output=text_output
        )
        intent: Intent = "read" if read_only else "write"
        started = time.perf_counter()
        changes = not read_only and any(self.schema.changed_by(b.tree) for b in statements)
        async with (
            Guard(timeout_ms, abort) as guard,
            self._changing(changes),
            self._session(intent, role, key) as held,
        ):
            conn, node = held.conn, held.node.name
            guard.use(held)
            inflight = self._inflight[node]
            inflight.add(guard)
            try:
                if self.own_sessions:
                    results = await transactions.pipelined(
                        held, statements, limits, isolation, self._ctx, deferrable
                    )
                else:
                    results = await pgbouncer.transaction(
                        held, statements, limits, isolation, self._ctx, deferrable
                    )
            except psycopg.Error as exc:
                await rollback(conn)
                index = None  # the connection failed: no statement is to blame
                if isinstance(exc, StatementFailed):
                    index, exc = exc.index, exc.cause
                raise await self._failures.error(exc, conn, node, intent, index) from None
            finally:
                inflight.discard(guard)
                guard.use(None)
        return Outcome(results, node, ms_since(started))

    def stream(
        self, bound: BoundSQL, limits: Limits, chunk_rows: int
    ) -> AsyncGenerator[tuple[str, Any]]:
        """Yield ("node", name), ("columns", [...]), ("rows", [...])..., ("end", result)
        (app/sql/streaming.py)."""
        lock_code.check(self.schema.locks, [bound.tree])
        intent: Intent = "read" if limits.read_only else "write"
        # As in run(): the facts are unknown from before a statement that may change the
        # schema starts until read again after its commit (the checkout's end).
        changes = not limits.read_only and self.schema.changed_by(bound.tree)

        @asynccontextmanager
        async def checkout() -> AsyncIterator[Checkout]:
            async with (
                self._changing(changes),
                self._session(intent, limits.role, limits.key) as held,
            ):
                yield held

        return self._streams.stream(bound, limits, chunk_rows, checkout)

    async def with_deadline(
        self, work: Awaitable[T], timeout_ms: int, abort: Abort | None = None
    ) -> T:
        """Await `work` within a request's deadline (app/sql/guard.py), or until `abort`
        finishes: giving up cancels it and raises QueryTimeout (ClientGone)."""
        async with Guard(timeout_ms, abort):
            return await work


def _sent_write_lost(
    error: MirrorpoolError, bound: BoundSQL, limits: Limits, ctx: Context
) -> MirrorpoolError:
    """A statement that may write, whose connection failed while it ran (lost, or shut at
    its deadline because the server did not answer its own timeout): its outcome is
    unknown, and it must not be answered as retryable. Reads keep their error (retried on
    another node when pure: no code of the database's own runs unseen in them either)."""
    if not isinstance(error, NodeFailed) or limits.read_only or ctx.pure_read(bound.tree):
        return error
    return OutcomeUnknown(
        f"{error.detail}: the write was sent, and may or may not have committed", **error.extra
    )
