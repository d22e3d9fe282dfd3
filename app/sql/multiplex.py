"""Multiplexing: concurrent quick statements share pooled connections, pipelined.

Under load most of a request's cost on our side is the round trip itself: taking a pooled
connection, one write, waking up for one read, giving the connection back. Here a plain
statement (autocommit, default timeout) that has run quickly before joins its node's lane;
a runner holding a pooled connection sends every statement waiting in the lane at once, in
libpq's pipeline mode, each followed by its own Sync. A Sync ends the implicit transaction,
so each statement commits or fails on its own, exactly as it would in autocommit; only the
round trips are shared. Npgsql's multiplexing works the same way.

What stays out of the lanes: statements never seen before or seen to be slow (a slow one
would hold up the rest of its batch), statements that may change the session, anything with
its own timeout, role or transaction, and everything behind PgBouncer (the lanes prepare
statements by name). Those take a pooled connection of their own, as before.

A runner takes one batch per pooled connection and gives the connection back before the
next, so requests that need a connection of their own wait their turn in the pool's queue.
A request that gives up (deadline, client gone) before its statement is sent is dropped from
the lane; once sent, its statement runs and the answer is thrown away.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from psycopg import AsyncConnection, abc, pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.generators import fetch_many, send
from psycopg.pq.abc import PGresult

from app.cluster.cluster import Cluster
from app.cluster.node import Node
from app.errors import MirrorpoolError, PoolExhausted
from app.settings import Settings
from app.sql import session
from app.sql.columns import TypeNames
from app.sql.guard import shut
from app.sql.results import RowFormat, StatementResult, statement_result

logger = logging.getLogger(__name__)

# A statement joins a lane once it has run in under this long; one slow run takes it out.
QUICK_S = 0.005
# Statements sent in one pipeline at most.
MAX_BATCH = 32
# Statements prepared by name per connection at most; the rest run unnamed.
MAX_PREPARED = 256
# Statement texts whose speed is remembered at most.
MAX_KNOWN = 4096
# Seconds a batch may take beyond the statement timeout before its connection is shut.
GRACE_S = 1.0

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)
_TUPLES = pq.ExecStatus.TUPLES_OK
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
_names = itertools.count()


@dataclass(slots=True)
class Job:
    """One statement waiting in a lane, and the future its request awaits."""

    sql: str
    params: list[Any]
    max_rows: int
    row_format: RowFormat
    future: asyncio.Future[StatementResult]
    retried: bool = False


@dataclass(slots=True)
class _Sent:
    """A job in flight, with the name it prepares (when it does) and what came back."""

    job: Job
    prepares: bytes | None
    key: tuple[str, Any]
    results: list[PGresult] = field(default_factory=list)


@dataclass(slots=True)
class _ConnState:
    """What a lane keeps per connection: its transformer and its prepared statements."""

    tx: abc.Transformer
    prepared: dict[tuple[str, Any], bytes] = field(default_factory=dict)


@dataclass
class LaneStats:
    """Counters shown in /pool/stats."""

    statements: int = 0
    batches: int = 0
    largest_batch: int = 0

    def as_json(self) -> dict[str, Any]:
        """The counters, with the mean batch size."""
        mean = round(self.statements / self.batches, 2) if self.batches else 0.0
        return {
            "statements": self.statements,
            "batches": self.batches,
            "mean_batch": mean,
            "largest_batch": self.largest_batch,
        }


class Lane:
    """The queue of one node's multiplexed statements and the runners that send them."""

    def __init__(
        self, node: Node, cluster: Cluster, settings: Settings, types: TypeNames, known: Known
    ) -> None:
        self.node = node
        self.cluster = cluster
        self.settings = settings
        self.types = types
        self.known = known
        self.stats = LaneStats()
        self._pending: deque[Job] = deque()
        self._runners = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: set[AsyncConnection[Any]] = set()
        self._conns: WeakKeyDictionary[AsyncConnection[Any], _ConnState] = WeakKeyDictionary()

    def submit(self, job: Job) -> None:
        """Queue a statement; start a runner while fewer run than the pool has connections."""
        waiting = self.settings.pool_max_waiting
        if waiting and len(self._pending) >= waiting:
            raise PoolExhausted(
                f"too many requests are waiting for a connection to {self.node.name}"
            )
        self._pending.append(job)
        if self._runners < self.settings.pool_max_size:
            self._runners += 1
            task = asyncio.ensure_future(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def sever(self, error: BaseException) -> None:
        """The node is lost: fail what waits and shut the connections in flight."""
        self._fail_pending(error)
        for conn in list(self._busy):
            shut(conn)

    def _fail_pending(self, error: BaseException) -> None:
        while self._pending:
            _settle(self._pending.popleft().future, error=error)

    async def _run(self) -> None:
        try:
            while self._pending:
                try:
                    conn = await self.cluster.getconn(self.node, self.settings.pool_timeout)
                except MirrorpoolError as exc:
                    self._fail_pending(exc)
                    return
                try:
                    await self._batch(conn)
                finally:
                    await self.node.pool.putconn(conn)
        except Exception:  # a bug here must not leave requests waiting forever
            logger.exception("multiplexing runner for %s failed", self.node.name)
            self._fail_pending(psycopg.InterfaceError("the multiplexing runner failed"))
        finally:
            self._runners -= 1

    def _take(self) -> list[Job]:
        jobs: list[Job] = []
        while self._pending and len(jobs) < MAX_BATCH:
            job = self._pending.popleft()
            if not job.future.done():  # its request gave up while it waited
                jobs.append(job)
        return jobs

    async def _batch(self, conn: AsyncConnection[Any]) -> None:
        jobs = self._take()
        if not jobs:
            return
        try:
            await self._run_batch(conn, jobs)
        except (psycopg.Error, OSError) as exc:
            # The connection broke (or was shut at the deadline): what was sent may or may
            # not have run. The pool drops the closed connection.
            for job in jobs:
                _settle(job.future, error=exc)
            await conn.close()
        except BaseException as exc:
            for job in jobs:
                _settle(job.future, error=psycopg.InterfaceError(f"multiplexing failed: {exc!r}"))
            await conn.close()
            raise

    async def _run_batch(self, conn: AsyncConnection[Any], jobs: list[Job]) -> None:
        state = self._conns.get(conn)
        if state is None:
            state = self._conns[conn] = _ConnState(Transformer.from_context(conn))
        before = session.snapshot(conn)
        loop = asyncio.get_running_loop()
        deadline = self.settings.statement_timeout_ms / 1000 + GRACE_S
        timer = loop.call_later(deadline, shut, conn)
        self._busy.add(conn)
        started = loop.time()
        try:
            sent = self._send(conn.pgconn, state, jobs)
            if not sent:
                return
            groups = await conn.wait(_collect(conn.pgconn, len(sent)))
            conn.pgconn.exit_pipeline_mode()
        finally:
            timer.cancel()
            self._busy.discard(conn)
        _distribute(sent, groups)
        self.stats.statements += len(sent)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(sent))
        each_s = (loop.time() - started) / len(sent)
        await self._finish(conn, state, sent, each_s, before)

    def _send(self, pgconn: Any, state: _ConnState, jobs: list[Job]) -> list[_Sent]:
        """Queue each statement and its Sync in libpq's buffer (one write sends them all)."""
        tx = state.tx
        sent: list[_Sent] = []
        pgconn.enter_pipeline_mode()
        for job in jobs:
            try:
                params = tx.dump_sequence(job.params, [PyFormat.AUTO] * len(job.params))
            except psycopg.Error as exc:  # a value psycopg cannot send: this job only
                _settle(job.future, error=exc)
                continue
            key = (job.sql, tx.types)
            name = state.prepared.get(key)
            prepares = None
            if name is None and len(state.prepared) < MAX_PREPARED:
                name = prepares = f"_mp_{next(_names)}".encode()
                pgconn.send_prepare(name, job.sql.encode(), tx.types)
            if name is None:
                pgconn.send_query_params(job.sql.encode(), params, tx.types, tx.formats)
            else:
                pgconn.send_query_prepared(name, params, tx.formats)
            pgconn.pipeline_sync()
            sent.append(_Sent(job, prepares, key))
        if not sent:
            pgconn.exit_pipeline_mode()
        return sent

    async def _finish(
        self,
        conn: AsyncConnection[Any],
        state: _ConnState,
        sent: list[_Sent],
        each_s: float,
        before: tuple[bytes | None, ...],
    ) -> None:
        """Load rows and settle each job; reset the session if a statement changed it."""
        tx = state.tx
        encoding = conn.info.encoding
        dirty = session.snapshot(conn) != before
        for item in sent:
            job = item.job
            results = item.results
            if item.prepares is not None:
                prepared, results = results[0], results[1:]
                if prepared.status in _OK:
                    state.prepared[item.key] = item.prepares
                else:
                    _settle(job.future, error=psycopg.errors.error_from_result(prepared, encoding))
                    continue
            result = results[0] if results else None
            if result is None or result.status not in _OK:
                error = _error_of(result, encoding)
                if error.sqlstate == "26000" and item.prepares is None and not job.retried:
                    # Our prepared statement is gone (a DEALLOCATE or DISCARD ran on this
                    # connection): it never ran, so it can safely go again, unprepared.
                    state.prepared.clear()
                    job.retried = True
                    try:
                        self.submit(job)
                    except MirrorpoolError as exc:
                        _settle(job.future, error=exc)
                    continue
                _settle(job.future, error=error)
                continue
            command = result.command_status.decode() if result.command_status else None
            if session.may_dirty(job.sql, command):
                dirty = True
                self.known.forget(job.sql)
            else:
                self.known.observe(job.sql, each_s)
            columns = await self.types.of_result(conn, self.node.name, result)
            rows: list[Any] = []
            if result.status == _TUPLES:
                tx.set_pgresult(result)
                rows = tx.load_rows(0, min(result.ntuples, job.max_rows + 1), tuple)
            _settle(
                job.future,
                result=statement_result(
                    columns, rows, command, result.command_tuples, job.max_rows, job.row_format
                ),
            )
        if dirty and not conn.closed:
            await session.reset(conn)


class Known:
    """How long statements took last, by SQL text: which ones are quick enough to share."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    def quick(self, sql: str) -> bool:
        """True when the statement ran quickly and left the session alone last time."""
        seconds = self._seconds.get(sql)
        return seconds is not None and seconds < QUICK_S

    def observe(self, sql: str, seconds: float) -> None:
        """Remember a run: a slow one counts at once, quick ones bring the figure down."""
        last = self._seconds.get(sql)
        if last is None and len(self._seconds) >= MAX_KNOWN:
            self._seconds.clear()
        self._seconds[sql] = (
            seconds if last is None or seconds > last else last * 0.5 + seconds * 0.5
        )

    def forget(self, sql: str) -> None:
        """The statement changed its session: it never shares a connection again."""
        self._seconds[sql] = float("inf")


class Multiplexer:
    """The lanes, one per node, and what decides which statements take them."""

    def __init__(self, cluster: Cluster, settings: Settings, types: TypeNames) -> None:
        self.known = Known()
        self.lanes = {
            node.name: Lane(node, cluster, settings, types, self.known) for node in cluster.nodes
        }

    async def run(
        self, node: Node, sql: str, params: list[Any], max_rows: int, row_format: RowFormat
    ) -> StatementResult:
        """Run one statement through the node's lane; raises what psycopg raised for it."""
        future: asyncio.Future[StatementResult] = asyncio.get_running_loop().create_future()
        self.lanes[node.name].submit(Job(sql, params, max_rows, row_format, future))
        return await future

    def sever(self, node: Node, error: BaseException) -> None:
        """Fail the node's multiplexed statements now."""
        lane = self.lanes.get(node.name)
        if lane is not None:
            lane.sever(error)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per node: statements multiplexed, batches sent, mean and largest batch."""
        return {name: lane.stats.as_json() for name, lane in self.lanes.items()}


def _collect(pgconn: Any, syncs: int) -> Generator[Any, Any, list[list[PGresult]]]:
    """Flush the pipeline and read every result group up to the last of `syncs` Syncs."""
    yield from send(pgconn)
    groups: list[list[PGresult]] = []
    while syncs:
        results = yield from fetch_many(pgconn)
        if not results:
            raise psycopg.OperationalError("the pipeline ended before its last Sync")
        if results[0].status == _SYNC:
            syncs -= 1
        groups.append(results)
    return groups


def _distribute(sent: list[_Sent], groups: list[list[PGresult]]) -> None:
    """Hand each job the results that came back before its Sync."""
    items = iter(sent)
    item = next(items)
    for results in groups:
        if results[0].status == _SYNC:
            item = next(items, item)
            continue
        item.results.extend(results)


def _error_of(result: PGresult | None, encoding: str) -> psycopg.Error:
    if result is None:
        return psycopg.OperationalError("the server sent no result for the statement")
    if result.status == _ABORTED:
        return psycopg.errors.PipelineAborted("the statement was not run")
    return psycopg.errors.error_from_result(result, encoding=encoding)


def _settle(
    future: asyncio.Future[StatementResult],
    result: StatementResult | None = None,
    error: BaseException | None = None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    elif result is not None:
        future.set_result(result)
