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
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection

from app.cluster.cluster import Cluster
from app.cluster.node import Node
from app.errors import MirrorpoolError, PoolExhausted
from app.settings import Settings
from app.sql import pipeline, session
from app.sql.columns import TypeNames
from app.sql.guard import shut
from app.sql.pipeline import Command
from app.sql.results import RowFormat, StatementResult, statement_result

logger = logging.getLogger(__name__)

# A statement joins a lane once it has run in under this long; one slow run takes it out.
QUICK_S = 0.005
# Statements sent in one pipeline at most.
MAX_BATCH = 32
# Statement texts whose speed is remembered at most.
MAX_KNOWN = 4096
# Seconds a batch may take beyond the statement timeout before its connection is shut.
GRACE_S = 1.0


@dataclass(slots=True)
class Job:
    """One statement waiting in a lane, and the future its request awaits."""

    sql: str
    params: list[Any]
    max_rows: int
    row_format: RowFormat
    future: asyncio.Future[StatementResult]
    retried: bool = False


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
        before = session.snapshot(conn)
        loop = asyncio.get_running_loop()
        deadline = self.settings.statement_timeout_ms / 1000 + GRACE_S
        timer = loop.call_later(deadline, shut, conn)
        self._busy.add(conn)
        started = loop.time()
        try:
            replies = await pipeline.run_units(conn, [[Command(j.sql, j.params)] for j in jobs])
        finally:
            timer.cancel()
            self._busy.discard(conn)
        each_s = (loop.time() - started) / len(jobs)
        self.stats.statements += len(jobs)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        dirty = session.snapshot(conn) != before
        for job, (reply,) in zip(jobs, replies, strict=True):
            if reply.error is not None:
                if reply.error.sqlstate == "26000" and not job.retried:
                    # Our prepared statement is gone (a DEALLOCATE or DISCARD ran on this
                    # connection): the statement never ran, so it can safely go again.
                    pipeline.forget_prepared(conn)
                    job.retried = True
                    self._resubmit(job)
                else:
                    _settle(job.future, error=reply.error)
                continue
            result = reply.result
            assert result is not None
            command = result.command_status.decode() if result.command_status else None
            if session.may_dirty(job.sql, command):
                dirty = True
                self.known.forget(job.sql)
            else:
                self.known.observe(job.sql, each_s)
            columns = await self.types.of_result(conn, self.node.name, result)
            rows = pipeline.load_rows(conn, result, job.max_rows + 1)
            _settle(
                job.future,
                result=statement_result(
                    columns, rows, command, result.command_tuples, job.max_rows, job.row_format
                ),
            )
        if dirty and not conn.closed:
            await session.reset(conn)

    def _resubmit(self, job: Job) -> None:
        try:
            self.submit(job)
        except MirrorpoolError as exc:
            _settle(job.future, error=exc)


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
