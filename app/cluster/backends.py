"""Backends that outlive their connections, and how they are ended.

A pooled connection given up on while its statement ran (its request's deadline passed, its
client left, its stream stalled, its batch's server froze) is ended at once: psycopg's cancel
request goes to the server and the socket is shut, so the request answers without waiting
for a server that may never answer. The backend may still run (a function that catches the
cancel, a statement whose own statement_timeout is off): if pg_stat_activity still lists it
shortly afterwards, the health monitor's connection terminates it (pg_terminate_backend,
which needs pg_signal_backend for the backends of other logins). Until pg_stat_activity no
longer lists it, the connection is not given back to its pool: the pool counts it as in use
and opens no replacement, so mirrorpool never holds more backends on a node than its pools
allow, however fast requests time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection, pq
from psycopg.generators import cancel as cancel_generator
from psycopg.waiting import wait_conn_async

from app.cluster.monitor import HealthMonitor
from app.cluster.node import Node, shut
from app.supervisor import Supervisor

logger = logging.getLogger(__name__)

# How long the cancel request may take to reach the server.
CANCEL_TIMEOUT_S = 2.0
# How long a backend has to stop after its cancel before it is terminated.
TERMINATE_AFTER_S = 0.25
# How often pg_stat_activity is read while backends are waited for.
CHECK_EVERY_S = 0.05
# A backend still listed this long after it was given up on (one that ignores even
# pg_terminate_backend, or a server that cannot be asked) no longer holds its pool's slot.
GIVE_UP_S = 30.0

Release = Callable[[], Awaitable[None]]

_ALIVE_SQL = """
SELECT a.pid FROM pg_stat_activity a
JOIN unnest(%s::int4[], %s::text[]) AS h(pid, usename) USING (pid, usename)
"""
_TERMINATE_SQL = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s AND usename = %s"
)


@dataclass(slots=True)
class _Held:
    """A given-up connection's backend, and how its slot goes back once it is gone."""

    pid: int
    user: str
    since: float
    release: Release
    terminated: bool = False


class Backends:
    """Ends the statements of given-up connections and holds their pool slots until their
    backends are gone."""

    def __init__(self, monitor: HealthMonitor, supervisor: Supervisor) -> None:
        self._monitor = monitor
        self._supervisor = supervisor
        self._held: dict[str, list[_Held]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cannot_signal: set[str] = set()
        self._closed = False

    def end(self, conn: AsyncConnection[Any], pooled: bool = False) -> asyncio.Task[Any] | None:
        """Stop the statement running on `conn` now, without waiting: psycopg's cancel
        request is sent in the background and the socket is shut. Behind a pooler
        (`pooled`), the socket is shut only once the cancel has been delivered (or failed):
        PgBouncer forgets a client whose socket closes, and drops a cancel that comes with
        its key after that, so the server's backend would run on (code at a COMMIT, where no
        statement timeout applies). Returns the task that shuts it then, if there is one:
        the connection is not closed (nor given back) before it is done."""
        if conn.closed:
            return None
        cancel = _cancel_of(conn)  # (made before the socket goes: it carries the cancel key)
        if pooled and cancel is not None:
            return self._spawn(_cancel_then_shut(cancel, conn), "cancel-backend")
        shut(conn)
        if cancel is not None:
            self._spawn(_send_cancel(cancel), "cancel-backend")
        return None

    def cancel(self, conn: AsyncConnection[Any]) -> None:
        """Send psycopg's cancel request for the statement running on `conn`, in the
        background; the socket stays (end() shuts it too)."""
        cancel = None if conn.closed else _cancel_of(conn)
        if cancel is not None:
            self._spawn(_send_cancel(cancel), "cancel-backend")

    def hold(self, node: Node, pid: int, user: str, release: Release) -> None:
        """Call `release` once backend `pid` (logged in as `user`) has left `node`;
        terminate it if it is still there TERMINATE_AFTER_S from now."""
        loop = asyncio.get_running_loop()
        if self._closed or not pid:
            self._spawn(release(), "release-connection")
            return
        self._held.setdefault(node.name, []).append(_Held(pid, user, loop.time(), release))
        if node.name not in self._watchers:
            self._watchers[node.name] = self._supervisor.spawn(
                self._watch(node), name=f"backends-{node.name}"
            )

    def held(self, node: str) -> int:
        """How many of the node's connections wait for their backends to go."""
        return len(self._held.get(node, ()))

    async def close(self) -> None:
        """Release every held slot now (the pools are closing) and stop watching."""
        self._closed = True
        for task in list(self._watchers.values()):
            task.cancel()
        await asyncio.gather(*self._watchers.values(), return_exceptions=True)
        for held in self._held.values():
            for item in held:
                with contextlib.suppress(Exception):
                    await item.release()
        self._held.clear()
        for task in list(self._tasks):
            task.cancel()

    async def _watch(self, node: Node) -> None:
        loop = asyncio.get_running_loop()
        try:
            while held := self._held.get(node.name):
                await asyncio.sleep(CHECK_EVERY_S)
                alive = await self._alive(node, held)
                now = loop.time()
                for item in list(held):
                    gone = alive is not None and item.pid not in alive
                    if gone or node.state.reachable is False or now - item.since >= GIVE_UP_S:
                        held.remove(item)
                        await _release(item)
                    elif not item.terminated and now - item.since >= TERMINATE_AFTER_S:
                        item.terminated = True
                        await self._terminate(node, item)
        finally:
            self._watchers.pop(node.name, None)
            if not self._held.get(node.name):
                self._held.pop(node.name, None)

    async def _alive(self, node: Node, held: list[_Held]) -> set[int] | None:
        """The pids of `held` pg_stat_activity still lists; None when it cannot be read."""
        try:
            rows = await self._monitor.ask(
                node, _ALIVE_SQL, [[h.pid for h in held], [h.user for h in held]]
            )
        except Exception as exc:
            logger.debug("cannot read pg_stat_activity on %s: %s", node.name, exc)
            return None
        return {int(row[0]) for row in rows}

    async def _terminate(self, node: Node, item: _Held) -> None:
        if node.name in self._cannot_signal:
            return
        try:
            await self._monitor.ask(node, _TERMINATE_SQL, [item.pid, item.user])
        except psycopg.errors.InsufficientPrivilege:
            self._cannot_signal.add(node.name)
            logger.warning(
                "%s: cannot terminate a backend of %r left running past its request's "
                "deadline (grant pg_signal_backend to the service's login); it is waited for",
                node.name,
                item.user,
            )
        except Exception as exc:
            logger.debug("cannot terminate backend %s on %s: %s", item.pid, node.name, exc)

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> bool:
        """Give a connection back in the background (its request has its answer); False,
        with `work` not started, once the service is shutting down."""
        if self._supervisor.closed or self._closed:
            work.close()
            return False
        self._spawn(work, name)
        return True

    def _spawn(self, work: Awaitable[Any], name: str) -> asyncio.Task[Any] | None:
        if self._supervisor.closed:
            # A request that outlived the shutdown: its pool is closed, nothing to give back.
            if asyncio.iscoroutine(work):
                work.close()
            return None
        task = self._supervisor.spawn(_awaited(work), name=name, log_failure=False)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        if asyncio.iscoroutine(work):
            # A task cancelled before its first step (at shutdown) never starts `work`:
            # closed then, it is not reported as never awaited.
            coroutine = work
            task.add_done_callback(lambda t: coroutine.close() if t.cancelled() else None)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("ending a backend failed: %s", task.exception())


async def _awaited(work: Awaitable[Any]) -> Any:
    return await work


def _cancel_of(conn: AsyncConnection[Any]) -> pq.abc.PGcancelConn | None:
    """The connection's cancel connection (its backend's cancel key), or None."""
    try:
        return conn.pgconn.cancel_conn()
    except psycopg.Error:
        return None


async def _send_cancel(cancel: pq.abc.PGcancelConn) -> None:
    """Send a cancel request as psycopg's cancel_safe() does, on its own connection."""
    try:
        cancel.start()
        await wait_conn_async(cancel_generator(cancel), timeout=CANCEL_TIMEOUT_S)
    except Exception as exc:
        logger.debug("cancel request failed: %s", exc)
    finally:
        cancel.finish()


async def _cancel_then_shut(cancel: pq.abc.PGcancelConn, conn: AsyncConnection[Any]) -> None:
    """_send_cancel, then the socket shut (however the cancel went)."""
    try:
        await _send_cancel(cancel)
    finally:
        shut(conn)


async def _release(item: _Held) -> None:
    try:
        await item.release()
    except Exception:
        logger.exception("giving back a connection whose backend is gone failed")
