"""A request's deadline and its client's disconnection, enforced without waiting on the server.

The request runs in its own task; the guard adds no task while it is quick. At the deadline
it ends the connection in use (app/cluster/backends.py: psycopg's cancel request goes to
the server and the socket is shut, so the statement fails at once with a connection error,
whatever state the server is in: a frozen server cannot hold us; the backend is terminated
if it runs on, and its connection counts against the pool until it is gone), or cancels the
task while it still waits for a connection. When the request outlives
WATCH_AFTER_S, a watcher starts listening for the client's disconnection and, if it leaves,
gives up the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

from psycopg import AsyncConnection

from app.cluster.node import shut
from app.errors import ClientGone, QueryTimeout

# Quick requests never pay for a watcher task.
WATCH_AFTER_S = 0.05
# Our own deadline is the statement timeout plus this much, so the server's timeout (a
# clean 57014 with the connection intact) wins whenever the server is alive to enforce it.
DEADLINE_GRACE_S = 1.0


class Held(Protocol):
    """A connection in use, and how to end its statement (app/sql/checkout.py Checkout)."""

    conn: AsyncConnection[Any]

    def end(self) -> None:
        """Stop the statement on the server now, without waiting."""


class Guard:
    """Bounds the current task by `timeout_s` and by `abort` (the client leaving)."""

    def __init__(
        self,
        timeout_s: float,
        timeout_ms: int,
        abort: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.timeout_ms = timeout_ms
        self._abort = abort
        self._held: Held | None = None
        self._expired = False
        self._aborted = False
        self._task: asyncio.Task[Any] | None = None
        self._handles: list[asyncio.TimerHandle] = []
        self._watcher: asyncio.Task[Any] | None = None
        self._deadline = 0.0
        self.severed = False

    @property
    def expired(self) -> bool:
        """True once the deadline has passed, or the client has gone: the request gave up
        (and is not to be retried)."""
        return self._expired or self._aborted

    def use(self, held: Held | None) -> None:
        """The connection the request is using now (None between connections)."""
        self._held = held

    async def __aenter__(self) -> Guard:
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        # One timer for a quick request: the deadline is armed when the watch begins.
        first = min(WATCH_AFTER_S, self.timeout_s)
        self._deadline = loop.time() + self.timeout_s
        self._handles.append(loop.call_later(first, self._later))
        return self

    def _later(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            self._expire()
            return
        self._handles.append(loop.call_at(self._deadline, self._expire))
        if self._abort is not None:
            self._watch()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        for handle in self._handles:
            handle.cancel()
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
        if exc is None:
            return False
        if self._aborted:
            self._uncancel()
            raise ClientGone("the client disconnected; the statement was cancelled") from None
        if self._expired and not isinstance(exc, ClientGone):
            self._uncancel()
            raise QueryTimeout(
                f"the statement did not finish within {self.timeout_ms} ms", sqlstate="57014"
            ) from None
        return False

    def _uncancel(self) -> None:
        if self._task is not None and self._task.cancelling():
            self._task.uncancel()

    def sever(self) -> None:
        """Its node is gone: fail the statement in flight now, or stop waiting for one of
        the node's connections (the request is not expired and may be retried)."""
        if self._held is not None:
            if not self._held.conn.closed:
                shut(self._held.conn)
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

    def _expire(self) -> None:
        self._expired = True
        self.end()

    def end(self) -> None:
        """Give up now: end the statement in flight, or stop waiting for a connection."""
        held = self._held
        if held is not None and not held.conn.closed:
            held.end()
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _watch(self) -> None:
        assert self._abort is not None
        self._watcher = asyncio.ensure_future(self._wait_for_abort(self._abort))

    async def _wait_for_abort(self, abort: Callable[[], Awaitable[Any]]) -> None:
        await abort()
        self._aborted = True
        self.end()
