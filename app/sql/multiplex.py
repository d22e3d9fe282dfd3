"""Multiplexing: concurrent quick plain statements share pooled connections, pipelined.

Under load most of a request's cost on our side is the round trip itself: taking a pooled
connection, one write, waking up for one read, giving the connection back. Here a plain
statement (autocommit, default timeout) that has run quickly before joins its node's lane; a
runner holding a pooled connection sends every statement waiting in the lane at once, in
libpq's pipeline mode (app/sql/pipeline), each followed by its own Sync. A Sync ends the
implicit transaction, so each statement succeeds or fails on its own, exactly as it would in
autocommit; only the round trips are shared. Npgsql's multiplexing works the same way. A
quick batch answers its jobs at its end, a slow one each as its own Sync comes (Answers).

Only statements whose parse trees prove them pure reads (app/sql/session.py pure_read: a
query that writes nothing, locks no rows, and calls only vetted catalog functions, so it
cannot change the session its neighbours run in) or plain writes (session.lane_write, unless
MIRRORPOOL_MULTIPLEX_WRITES=false) take the lanes. What stays out: locking reads (a
statement waiting on a row lock would hold up every statement behind it), statements never
seen before or seen to be slow, anything with its own timeout, login or transaction, and
everything behind PgBouncer (the lanes prepare statements by name). Those take a pooled
connection of their own.

A write is answered only with the truth. One whose statement timeout ran out while it waited
in the lane is not sent (`_take`). One sent runs under what is left of its statement timeout,
set local to its own implicit transaction and counted on the server from when the server
began its batch (a batch with writes first notes the server's clock in the setting
`mirrorpool.lane_batch`), so the statements ahead of it count; with nothing left it is not
run. Its request waits for
that outcome past its own deadline (app/sql/guard.py Guard.spare). A write whose connection
broke after it was sent is answered OutcomeUnknown. It waits for a lock no longer than
LANE_LOCK_WAIT; past that it is undone and runs again on a connection of its own
(WaitedForLock), where waiting holds up no neighbour.

Each key has lanes of its own (one per node): a statement of one key never waits in a batch
behind another key's, so a key that makes a "quick" text slow (`pg_sleep($1)`, a range it
widens) delays only itself. A key's lanes run on at most its share of the pool
(app/cluster/share.py), like its other requests. A runner takes one batch per pooled
connection and gives the connection back before the next, so requests that need a
connection of their own wait their turn in the pool's queue.
A request that gives up (deadline, client gone) before its statement is sent is dropped from
the lane; once sent, a read runs and its answer is thrown away (a write: see above). A
statement over its max_rows or the response size is cancelled on the server
(app/sql/pipeline Keep); a later one of the batch that the cancel hit instead comes back
stale and is sent again, and the text leaves the key's lanes.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Any

import psycopg
from psycopg import AsyncConnection

from app.cluster.node import Node, shut
from app.errors import MirrorpoolError, PoolExhausted
from app.sql import pipeline, plain, session, text_output
from app.sql.checkout import Checkout, Checkouts
from app.sql.columns import TypeNames
from app.sql.guard import Guard
from app.sql.lane_answers import Answers, copy_error, failed, not_run, settle, unknown
from app.sql.lane_jobs import Job, LaneStats, WaitedForLock
from app.sql.options import LaneOptions
from app.sql.pipeline import Allowance, Command, Keep
from app.sql.quick import Known
from app.sql.results import StatementResult
from app.sql.schema_watch import SchemaWatch
from app.supervisor import Supervisor

# Known (which texts are quick) lives in app/sql/quick.py, Job, LaneStats and WaitedForLock in
# app/sql/lane_jobs.py, how a batch's jobs are answered in app/sql/lane_answers.py; the first
# are named here too, where the lanes' callers have always found them.
__all__ = ["Job", "Known", "Lane", "LaneStats", "Multiplexer", "WaitedForLock"]

logger = logging.getLogger(__name__)

# Statements sent in one pipeline at most.
MAX_BATCH = 16
# How long a write in a lane may wait for a lock (a row another transaction holds): past it,
# its neighbours would wait too, so it is cancelled and runs again on its own connection.
LANE_LOCK_WAIT = "20ms"
# What a run that waited for a lock counts as: out of the lanes for a few quick runs.
LOCK_WAITED_S = 1.0
_LOCK_NOT_AVAILABLE = "55P03"
# A write whose statement timeout has less than this left is not sent: it would be
# cancelled on the server at once, or finish past its time.
MIN_BUDGET_S = 0.002
# Before a batch's writes, the server notes when it began the batch (a setting of the
# lanes' own on their connections) ...
LANE_BATCH_SETTING = "mirrorpool.lane_batch"
# (put back after the batch to the value every connection starts with, app/main.py: another
# key's request on the connection reads nothing of whether or when a batch ran) ...
LANE_BATCH_IDLE = "0"
_BATCH_STARTED_SQL = (
    f"SELECT pg_catalog.set_config('{LANE_BATCH_SETTING}',"
    " EXTRACT(epoch FROM pg_catalog.clock_timestamp())::text, false)"
)
_BATCH_ENDED_SQL = (
    f"SELECT pg_catalog.set_config('{LANE_BATCH_SETTING}', '{LANE_BATCH_IDLE}', false)"
)
# ... and each write's unit gets, local to its own transaction, the lock wait and what is
# left of its statement timeout once the statements ahead of it ran ($2: what was left when
# the batch was sent, in ms). Nothing left: the setting fails (22023) and the write is not
# run (the rest of its unit is skipped), so the server never runs a write past its time.
_WRITE_LIMITS_SQL = (
    "SELECT pg_catalog.set_config('lock_timeout', $1, true),"
    " pg_catalog.set_config('statement_timeout', CASE WHEN ms >= 1"
    " THEN ms::int8::text ELSE 'its time ran out' END, true)"
    " FROM (SELECT $2::float8 - (EXTRACT(epoch FROM pg_catalog.clock_timestamp())"
    f" - pg_catalog.current_setting('{LANE_BATCH_SETTING}')::float8) * 1000 AS ms) AS left_ms"
)
_OUT_OF_TIME = "22023"
# A batch of one write has nothing ahead of it: its limits are what was left when it was
# sent (at least MIN_BUDGET_S), and the batch needs no clock of the server's.
_LONE_WRITE_LIMITS_SQL = (
    "SELECT pg_catalog.set_config('lock_timeout', $1, true),"
    " pg_catalog.set_config('statement_timeout', $2, true)"
)


class Lane:
    """The queue of one node's multiplexed statements and the runners that send them."""

    def __init__(
        self,
        node: Node,
        key: str,
        options: LaneOptions,
        checkouts: Checkouts,
        types: TypeNames,
        known: Known,
        supervisor: Supervisor,
    ) -> None:
        self.node = node
        self.key = key
        most = options.pool_max_size
        # The runners take the key's share of the pool, when shares apply.
        self._max_runners = min(most, node.share(None).limit) if checkouts.shares else most
        self.options = options
        self._checkouts = checkouts
        self._supervisor = supervisor
        self.types = types
        self.known = known
        self.stats = LaneStats()
        self._pending: deque[Job] = deque()
        self._runners = 0
        self._busy: set[AsyncConnection[Any]] = set()

    def submit(self, job: Job) -> None:
        """Queue a statement; start a runner while fewer run than the pool has connections."""
        waiting = self.options.pool_max_waiting
        if waiting and len(self._pending) >= waiting:
            self._drop_abandoned()
            if len(self._pending) >= waiting:
                raise PoolExhausted(
                    f"too many requests are waiting for a connection to {self.node.name}"
                )
        self._pending.append(job)
        if self._runners < self._max_runners:
            self._supervisor.spawn(self._run(), name=f"lane-{self.node.name}")
            self._runners += 1

    def sever(self, error: BaseException) -> None:
        """The node is lost: fail what waits and shut the connections in flight."""
        while self._pending:
            settle(self._pending.popleft().future, error=error)
        for conn in list(self._busy):
            shut(conn)

    def _drop_abandoned(self) -> None:
        self._pending = deque(j for j in self._pending if not j.future.done())

    async def _run(self) -> None:
        try:
            while self._pending:
                try:
                    held = await self._checkouts.take(self.node, None, self.key)
                except MirrorpoolError as exc:
                    self._expire(exc)
                    continue
                try:
                    await self._batch(held)
                finally:
                    await held.give_back()
        except Exception as exc:  # a bug here must not leave requests waiting forever
            logger.exception("multiplexing runner for %s failed", self.node.name)
            while self._pending:
                settle(self._pending.popleft().future, error=copy_error(exc))
        finally:
            self._runners -= 1

    def _expire(self, error: MirrorpoolError) -> None:
        """No connection came in time: fail the jobs that waited the pool timeout."""
        oldest = time.monotonic() - self.options.pool_timeout
        while self._pending and self._pending[0].queued <= oldest:
            settle(self._pending.popleft().future, error=copy_error(error))

    def _take(self) -> list[Job]:
        jobs: list[Job] = []
        now = time.monotonic()
        while self._pending and len(jobs) < MAX_BATCH:
            job = self._pending.popleft()
            if job.future.done():  # its request gave up while it waited
                continue
            if job.writes:
                if job.timeout_at - now < MIN_BUDGET_S:  # its time ran out in the queue
                    settle(job.future, error=not_run(self.options.statement_timeout_ms))
                    continue
                job.sent = True  # from here on, its outcome is the server's to tell
            jobs.append(job)
        return jobs

    async def _batch(self, held: Checkout) -> None:
        jobs = self._take()
        if not jobs:
            return
        conn = held.conn
        try:
            await self._run_batch(held, jobs)
        except (psycopg.Error, OSError) as exc:
            # The connection broke (or was shut by the batch's guard): what was sent may or may
            # not have run. A read fails with the error (and may be retried elsewhere); a
            # write's outcome is unknown. The pool drops the closed connection.
            for job in jobs:
                settle(job.future, error=unknown(exc) if job.writes else copy_error(exc))
            await conn.close()
        except BaseException as exc:
            for job in jobs:
                settle(job.future, error=failed(job, exc))
            await conn.close()
            raise

    async def _run_batch(self, held: Checkout, jobs: list[Job]) -> None:
        conn = held.conn
        # Each statement has its own statement_timeout on the server: a batch is only held
        # to each answer coming within it (plus a request's grace); past that, its
        # connection is ended.
        guard = Guard(self.options.statement_timeout_ms, idle=True)
        guard.use(held)
        guard.start()
        self._busy.add(conn)
        started = time.monotonic()
        clocked = len(jobs) > 1 and any(job.writes for job in jobs)
        units = [self._unit(job, started, clocked) for job in jobs]
        if clocked:
            units.insert(0, [Command(_BATCH_STARTED_SQL)])
            units.append([Command(_BATCH_ENDED_SQL)])
        answers = Answers(self, held, jobs, 1 if clocked else 0, started)
        try:
            replies = await pipeline.run_units(conn, units, guard.progress, answers.settled)
        finally:
            guard.stop()
            self._busy.discard(conn)
            answers.close()  # (their outcomes are known, whatever became of the units after)
        answers.unsent(replies)
        self.stats.statements += len(jobs)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        await answers.looked_up(conn)

    def _unit(self, job: Job, now: float, clocked: bool) -> list[Command]:
        """A job's commands, closed by a Sync of their own. A write waits for locks no
        longer than LANE_LOCK_WAIT and runs no longer than what is left of its statement
        timeout (settings local to its own implicit transaction; counted on the server's
        clock from the batch's start when `clocked`), and is never stopped over its limits
        (that would undo it): its extra rows are dropped."""
        keep = Keep(
            job.max_rows + 1,
            Allowance(self.options.max_response_bytes),
            stop=not job.writes,
            text=job.text,
            named=job.row_format == "object",
        )
        if job.text:  # a pure read answered as text: its styles, local to its unit
            return plain.commands_for(job.sql, job.params, keep, True)
        statement = Command(job.sql, job.params, keep=keep)
        if job.writes:
            left_ms = (job.timeout_at - now) * 1000
            limits = (
                Command(_WRITE_LIMITS_SQL, [LANE_LOCK_WAIT, left_ms])
                if clocked
                else Command(_LONE_WRITE_LIMITS_SQL, [LANE_LOCK_WAIT, str(max(1, int(left_ms)))])
            )
            return [limits, plain.IMMEDIATE, statement]
        return [statement]

    def settle_job(
        self, held: Checkout, job: Job, unit: pipeline.UnitReply, seconds: float
    ) -> bool:
        """Answer one job as its Sync came; False when its answer needs a type looked up
        (on the connection, once the batch is over)."""
        # Only pure reads and plain writes join a lane; should one have changed the session
        # all the same (a reported parameter moved), the checkout resets it before reuse.
        self.known.mark(held, job.tree)
        if any(reply.oversized for reply in unit.replies):
            held.mark(session.Effect.CLOSE)  # libpq's buffer grew for it: not kept
        reply = unit.replies[-1]
        if unit.stale and not job.retried:
            # Our prepared statement was gone or planned for an older schema: it did not
            # run, so it can safely go again.
            job.retried = True
            job.sent = False
            try:
                self.submit(job)
            except MirrorpoolError as exc:
                settle(job.future, error=exc)
            return True
        # A text that had to be stopped leaves the lane: stopping it cost its neighbours a
        # cancel, which may have hit one of them (sent again, as stale).
        self.known.observe(self.key, job.tree, job.sql, math.inf if reply.stopped else seconds)
        # A write's limits, or a text answer's styles, come first in its unit: when they
        # failed, the statement did not run (the rest of its unit was skipped).
        first = unit.replies[0].error if job.writes or job.text else None
        if first is not None:
            if job.writes and first.sqlstate == _OUT_OF_TIME:  # its time ran out behind others
                settle(job.future, error=not_run(self.options.statement_timeout_ms))
            else:
                settle(job.future, error=first)
            return True
        if reply.error is not None:
            if job.writes and reply.error.sqlstate == _LOCK_NOT_AVAILABLE:
                # Out of the lane until quick runs of its own bring it back.
                self.known.observe(self.key, job.tree, job.sql, LOCK_WAITED_S)
                settle(job.future, error=WaitedForLock(str(reply.error)))
                return True
            settle(job.future, error=reply.error)
            return True
        answer = (
            text_output.from_reply(reply, job.max_rows)
            if job.text
            else pipeline.answer_known(
                held.conn, self.node.name, self.types, reply, job.max_rows, job.row_format
            )
        )
        if answer is None:
            return False
        settle(job.future, result=answer)
        return True


class Multiplexer:
    """The lanes, one per node and key, and what decides which statements take them."""

    def __init__(
        self,
        options: LaneOptions,
        checkouts: Checkouts,
        types: TypeNames,
        supervisor: Supervisor,
        schema: SchemaWatch,
    ) -> None:
        self.known = Known(schema, options.quick_s, options.writes)
        self.lanes: dict[tuple[str, str], Lane] = {}
        self._options = options
        self._checkouts = checkouts
        self._types = types
        self._supervisor = supervisor

    def lane(self, node: Node, key: str) -> Lane:
        """The node's lane for `key`, made on first use (keys are the configured ones)."""
        lane = self.lanes.get((node.name, key))
        if lane is None:
            lane = self.lanes[node.name, key] = Lane(
                node,
                key,
                self._options,
                self._checkouts,
                self._types,
                self.known,
                self._supervisor,
            )
        return lane

    async def run(self, node: Node, key: str, job: Job) -> StatementResult:
        """Run one statement through the node's lane for `key`; raises what psycopg raised
        (a write whose connection was lost after it was sent: OutcomeUnknown)."""
        self.lane(node, key).submit(job)
        return await job.future

    def sever(self, node: Node, error: BaseException) -> None:
        """Fail the node's multiplexed statements now."""
        for (name, _), lane in list(self.lanes.items()):
            if name == node.name:
                lane.sever(error)

    def stats(self, node: str) -> LaneStats:
        """The node's lane figures, all keys together."""
        total = LaneStats()
        for (name, _), lane in self.lanes.items():
            if name == node:
                total.statements += lane.stats.statements
                total.batches += lane.stats.batches
                total.largest_batch = max(total.largest_batch, lane.stats.largest_batch)
        return total
