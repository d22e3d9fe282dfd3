"""Where a request's deadline is set and enforced: the one deadline of queries, transactions,
streams and lanes, kept without waiting on the server.

A request's deadline is its statement timeout plus DEADLINE_GRACE_S (`Guard(timeout_ms)`),
so the server's own statement_timeout (a clean 57014, the connection intact) wins whenever
the server is alive to enforce it. At the deadline the guard ends the connection in use
(app/sql/checkout.py Checkout.end, app/cluster/backends.py: psycopg's cancel request goes to
the server and the socket is shut, so the statement fails at once with a connection error,
whatever state the server is in; the backend is terminated if it runs on, and its connection
counts against the pool until it is gone), or cancels the guarded task while it has no
connection (waiting for one, or for another task's answer), and the task raises QueryTimeout.

Who uses it: Engine.run and Engine.transaction guard their own task; a stream's producer
task is guarded, and the consumer's wait for the stream's head is guarded too
(Engine.with_deadline); a lane's batch is guarded with `idle=True`: its deadline moves on
with every answer, so a batch is held only to each answer coming within the timeout, and
at the deadline only its connection is ended (the runner goes on with the next batch).

A write sent in a lane (app/sql/multiplex.py) is not stopped at its request's deadline: it
shares its connection, so ending that would end its neighbours, and it may still commit. Its
request waits for its real outcome instead (`Guard.spare`), which the server bounds (the
write's own statement_timeout, app/sql/multiplex.py); should nothing come within one more
timeout, the request gives up and raises OutcomeUnknown, never QueryTimeout.

A guard with `abort` (the HTTP client leaving) starts watching for it once the request has
lasted WATCH_AFTER_S, and gives up the same way if it comes; quick requests never pay for
the watcher task, which the guard itself ends when it exits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

from psycopg import AsyncConnection

from app.errors import ClientGone, OutcomeUnknown, QueryTimeout

# Quick requests never pay for a watcher task.
WATCH_AFTER_S = 0.05
# Our own deadline is the statement timeout plus this much, so the server's timeout (a
# clean 57014 with the connection intact) wins whenever the server is alive to enforce it.
DEADLINE_GRACE_S = 1.0

# A timer may fire this much before its time; the deadline is then taken as reached.
_EARLY_S = 0.001

# Returns once the HTTP client has gone; awaited only if the request lasts.
Abort = Callable[[], Awaitable[Any]]


class Held(Protocol):
    """A connection in use, and how to end its statement (app/sql/checkout.py Checkout)."""

    conn: AsyncConnection[Any]

    def end(self) -> None:
        """Stop the statement on the server now, without waiting."""

    def shut(self) -> None:
        """Fail the statement in flight at once: its node is gone."""


class Guard:
    """Bounds a task (or, without one, a connection's statement) by a deadline of
    `timeout_ms` + `grace_s`, and by `abort` (the client leaving)."""

    __slots__ = (
        "_abort", "_aborted", "_deadline", "_expired", "_handle", "_held", "_idle", "_loop",
        "_overdue", "_spare", "_spared", "_task", "_watcher", "severed", "timeout_ms",
        "timeout_s",
    )  # fmt: skip

    def __init__(
        self,
        timeout_ms: int,
        abort: Abort | None = None,
        *,
        grace_s: float = DEADLINE_GRACE_S,
        idle: bool = False,
    ) -> None:
        self.timeout_ms = timeout_ms
        self.timeout_s = timeout_ms / 1000 + grace_s
        self._abort = abort
        # The deadline moves on with progress(): a bound on silence, not on the whole.
        self._idle = idle
        self._held: Held | None = None
        self._expired = False
        self._aborted = False
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadline = 0.0
        self.severed = False
        # While this says so, the deadline does not stop the task (spare()).
        self._spare: Callable[[], bool] | None = None
        self._spared = False
        self._overdue = False

    @property
    def expired(self) -> bool:
        """True once the deadline has passed, or the client has gone: the request gave up
        (and is not to be retried)."""
        return self._expired or self._aborted

    def use(self, held: Held | None) -> None:
        """The connection the guarded work is using now (None between connections)."""
        self._held = held

    def spare(self, in_flight: Callable[[], bool] | None) -> None:
        """While `in_flight()` is true (a write sent in a lane, its outcome not back), the
        deadline does not stop the task: the request waits for the write's outcome. It waits
        one more timeout at most; then the task is stopped and the guard raises
        OutcomeUnknown. The client leaving stops it at once, as before (the write runs on)."""
        self._spare = in_flight

    def start(self, task: asyncio.Task[Any] | None = None) -> Guard:
        """Arm the deadline; at it, end the connection in use, or cancel `task` when none is."""
        self._task = task
        loop = self._loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self.timeout_s
        # One timer: a guard that watches for its client is first woken to start watching.
        first = min(WATCH_AFTER_S, self.timeout_s) if self._abort is not None else self.timeout_s
        self._handle = loop.call_later(first, self._wake)
        return self

    def progress(self) -> None:
        """An answer came (idle guards): the deadline moves on from now."""
        if self._idle and self._loop is not None:
            self._deadline = self._loop.time() + self.timeout_s

    def stop(self) -> None:
        """The guarded work is over: no deadline, no watching."""
        if self._handle is not None:
            self._handle.cancel()
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()

    async def __aenter__(self) -> Guard:
        return self.start(asyncio.current_task())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc is None:
            return
        if self._aborted:
            self._uncancel()
            raise ClientGone("the client disconnected; the statement was cancelled") from None
        if self._overdue:
            self._uncancel()
            raise OutcomeUnknown(
                "the write was sent, and its outcome did not come back within twice its"
                " deadline: the write may or may not have committed"
            ) from None
        spared = self._spared and not isinstance(exc, asyncio.CancelledError)
        if spared or isinstance(exc, OutcomeUnknown):
            return  # the write's own outcome, as the server told it (or that it is unknown)
        if self._expired and not isinstance(exc, ClientGone):
            self._uncancel()
            raise QueryTimeout(
                f"the statement did not finish within {self.timeout_ms} ms", sqlstate="57014"
            ) from None

    def _wake(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if self._deadline - now > _EARLY_S:  # woken to watch, or the deadline moved on
            self._handle = self._loop.call_at(self._deadline, self._wake)
            if self._abort is not None and self._watcher is None:
                self._watcher = asyncio.ensure_future(self._wait_for_abort(self._abort))
            return
        self._expired = True
        spare = self._spare
        if spare is not None and not self._spared and not self._aborted and spare():
            self._spared = True
            self._handle = self._loop.call_later(self.timeout_s, self._give_up)
            return
        self.end()

    def _give_up(self) -> None:
        """A spared write's outcome did not come within one more timeout."""
        if self._spare is not None and self._spare():
            self._overdue = True
        self.end()

    def _uncancel(self) -> None:
        if self._task is not None and self._task.cancelling():
            self._task.uncancel()

    def sever(self) -> None:
        """Its node is gone: fail the statement in flight now, or stop waiting for one of
        the node's connections (the request is not expired and may be retried)."""
        if self._held is not None:
            self._held.shut()
        elif self._task is not None:
            self.severed = True
            self._task.cancel()

    def take_severance(self) -> bool:
        """True (once) when sever() cancelled the task while it waited for a connection."""
        if not self.severed:
            return False
        self.severed = False
        self._uncancel()
        return True

    def end(self) -> None:
        """Give up now: end the statement in flight, or stop the guarded task."""
        held = self._held
        if held is not None and not held.conn.closed:
            held.end()
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _wait_for_abort(self, abort: Abort) -> None:
        await abort()
        self._aborted = True
        self.end()
