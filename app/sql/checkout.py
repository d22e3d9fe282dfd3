"""Where a session is reset: one checkout owns a pooled connection's life for one request,
taken from the pool of the request's login on its node and given back clean. Nothing else
takes a connection from a node's pool or gives one back.

A request runs on the node the cluster picked, on a connection that logged in as the key's
database role (one bounded pool per node and role, app/cluster/node.py) or as the service's
own login, within the key's share of that pool (app/cluster/share.py), which the checkout
takes first. What its statements may have left in the session (app/sql/session.py Effect,
read from their parse trees, or a reported parameter that changed since the snapshot taken
at checkout) is undone before the connection goes back: DISCARD ALL, or closing it. Behind a
transaction pooler the session is not ours, and nothing is reset
(app/sql/transaction_pooling.py refuses what would need it).

A connection given back while a statement may still run on it (its request gave up: the
deadline passed, the client left) is ended on the server and goes back only once its backend
is gone (app/cluster/backends.py): until then it counts against its pool, and against its
key's share of the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import AsyncConnection, pq
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from app.cluster.backends import Backends
from app.cluster.node import Node, shut
from app.cluster.share import KeyShare
from app.errors import PoolExhausted
from app.sql import session
from app.sql.schema_watch import ask_on
from app.sql.session import Effect

if TYPE_CHECKING:
    from app.sql.schema_code import SchemaCode
    from app.sql.schema_watch import SchemaWatch
    from app.sql.tree import Tree

Pool = AsyncConnectionPool[AsyncConnection[Any]]
# How long a connection whose statements ran while the catalog was being read again waits
# for a reading before it is closed rather than judged.
LATER_WAIT_S = 2.0


@dataclass(slots=True)
class Ending:
    """A transaction's end and the cleanup after it, under way behind a pooler: whether the
    end has been answered yet."""

    answered: bool = False


class Checkout:
    """A pooled connection held by one request, and what it needs before it goes back."""

    __slots__ = (
        "_backends", "_before", "_ended", "_key", "_later", "_pid", "_pool", "_share",
        "_shutting", "_user", "_watch", "conn", "effect", "ending", "node", "own_session",
    )  # fmt: skip

    def __init__(
        self,
        node: Node,
        pool: Pool,
        conn: AsyncConnection[Any],
        own_session: bool,
        backends: Backends,
        share: KeyShare | None = None,
        key: str = "",
    ) -> None:
        self.node = node
        self.conn = conn
        self.effect = Effect.NONE
        self.own_session = own_session
        self._pool = pool
        self._backends = backends
        self._share = share
        self._key = key
        self._before = session.snapshot(conn)
        # Behind a transaction pooler the backend is not the connection's: no pid to watch.
        self._pid = conn.info.backend_pid if own_session else 0
        self._user = conn.info.user
        # Statements that ran while the catalog was being read again, to be judged once it
        # is (later()), with the facts known before, and the watch to ask.
        self._later: list[tuple[Tree, SchemaCode | None]] = []
        # Set while a transaction's end and the cleanup after it run behind a pooler.
        self.ending: Ending | None = None
        # Once ended (end(), shut()), the connection never goes back open, however its
        # statement went: its socket is shut, or about to be (`_shutting`, behind a pooler
        # once the cancel is delivered), under whoever takes it next.
        self._ended = False
        self._shutting: asyncio.Task[Any] | None = None

    def mark(self, effect: Effect) -> None:
        """A statement may have left this in the session."""
        self.effect = max(self.effect, effect)

    def later(self, tree: Tree, watch: SchemaWatch) -> None:
        """A statement that may run code of the database's own out of sight ran while the
        catalog was being read again: judged before the connection goes back, with the facts
        of a reading begun after it ended (and those known before, for a change that
        removed code), or closed when no reading comes within LATER_WAIT_S."""
        self._later.append((tree, watch.last_known))
        self._watch = watch

    async def _judge_later(self) -> None:
        watch = self._watch
        if self.effect is Effect.CLOSE:  # it goes whatever the facts say
            self._later.clear()
            return
        if self._pool is self.node.pool and self.node.state.in_recovery is False:
            # On the writer, with the service's own login: read on this connection, which
            # is idle now (the watch's own reading might be waiting for it: a pool of one),
            # once reset: what the request left in its session (a search path, temporary
            # types named like the catalog's) must not steer what is published for everyone.
            await session.restore(self.conn, Effect.RESET)
            if self.conn.closed:
                self._later.clear()
                return
            facts = await watch.read_on(ask_on(self.conn), LATER_WAIT_S)
            reset = True
        else:
            facts = await watch.facts_since(time.monotonic(), LATER_WAIT_S)
            reset = False
        judged = Effect.NONE
        for tree, before in self._later:
            if facts is None:
                judged = Effect.CLOSE
                break
            code = facts if before is None else facts.union(before)
            judged = max(judged, session.effect_with(tree, code))
        self._later.clear()
        if judged is Effect.CLOSE or not reset:
            self.mark(judged)
        else:
            # Reset before the reading, which leaves nothing (its settings are local to its
            # units, its statements unnamed): no second DISCARD ALL.
            self.effect = Effect.NONE

    @property
    def judged_later(self) -> bool:
        """Whether statements wait to be judged once the catalog is read (later())."""
        return bool(self._later)

    def end(self) -> None:
        """Its request gives up: stop the statement on the server now, without waiting.

        While a transaction's end and the cleanup after it run behind a pooler (`ending`,
        app/sql/pgbouncer.py finish), the socket stays: a client gone once the end is
        answered leaves PgBouncer a server it takes as ready, which it would hand to the
        next client with the cleanup still running there. Until the end is answered a cancel
        is sent (a COMMIT waiting on a standby, code at the COMMIT); after that nothing, and
        the cleanup, bounded by what the request's own statements left, runs to its end."""
        ending = self.ending
        if ending is not None:
            if not ending.answered:
                self._backends.cancel(self.conn)
            return
        if not (self._ended or self.conn.closed):
            self._ended = True
            self._shutting = self._backends.end(self.conn, pooled=not self.own_session)

    def shut(self) -> None:
        """Its node is gone: fail the statement in flight at once (EOF on its socket)."""
        if not self.conn.closed:
            self._ended = True
            shut(self.conn)

    async def give_back(self) -> None:
        """Restore the session if needed, then return the connection to its pool; one whose
        statement may still run is ended, and returned once its backend is gone.

        A connection with statements to judge later goes back in the background: the
        request's answer does not wait for a catalog reading. Until it is judged it counts
        against its pool and its key's share, as it did while its request ran."""
        later = self._later and self.own_session and not _busy(self.conn)
        if not (later and self._backends.spawn(self._give_back(), "judge-connection")):
            await self._give_back()

    async def _give_back(self) -> None:
        conn = self.conn
        busy = self._ended or _busy(conn)
        try:
            if self.own_session and not busy:
                try:
                    if self._later:
                        await self._judge_later()
                    needed = self.effect
                    if needed is Effect.NONE and session.snapshot(conn) != self._before:
                        needed = Effect.RESET
                    await session.restore(conn, needed)
                except BaseException:
                    # Cancelled mid-judgement or mid-reset: what the session holds is
                    # unknown, so it goes.
                    busy = True
                    raise
        finally:
            if busy:
                self.end()
                self._backends.hold(self.node, self._pid, self._user, self._release)
            else:
                await self._release()

    async def _release(self) -> None:
        if self._ended and not self.conn.closed:
            if self._shutting is not None:
                # (bounded: the cancel request has CANCEL_TIMEOUT_S to reach the server)
                await asyncio.wait({self._shutting})
            await self.conn.close()
        closed = self.conn.closed
        try:
            await self._pool.putconn(self.conn)
            if closed and self._share is not None and not self._pool.closed:
                # The pool opens a connection in its place: the key's share is held until it
                # has, so the logins a key's statements cost come out of its own share.
                refills = self.node.refills.get(self._pool.name)
                if refills is not None:
                    await refills.replaced(self._pool.timeout)
        finally:
            if self._share is not None:
                self._share.release(self._key)
                self._share = None


def _busy(conn: AsyncConnection[Any]) -> bool:
    """True when a statement may still run on the connection's backend."""
    return conn.closed or conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE


class Checkouts:
    """Takes connections for requests: the one door to the nodes' pools."""

    def __init__(
        self, backends: Backends, pool_timeout: float, own_sessions: bool, shares: bool
    ) -> None:
        self.backends = backends
        self.pool_timeout = pool_timeout
        self.own_sessions = own_sessions
        # Whether a key's share of a pool applies (more than one key, MIRRORPOOL_AUTH=keys).
        self.shares = shares

    async def take(self, node: Node, role: str | None = None, key: str = "") -> Checkout:
        """A connection of `node` logged in as `role` (None: the service's login), within
        `key`'s share of its pool (none applies without shares, or for key "")."""
        pool = node.pool if role is None else await node.pool_for(role)
        share = node.share(role) if key and self.shares else None
        timeout = self.pool_timeout
        if share is not None:
            started = time.monotonic()
            await share.acquire(key, timeout)
            timeout = max(0.0, timeout - (time.monotonic() - started))
        try:
            conn = await pool.getconn(timeout)
        except BaseException as exc:
            if share is not None:
                share.release(key)
            if isinstance(exc, TooManyRequests):
                raise PoolExhausted(
                    f"too many requests are waiting for a connection to {node.name}"
                ) from None
            if isinstance(exc, PoolTimeout):
                raise PoolExhausted(f"no connection to {node.name} became free in time") from None
            raise
        return Checkout(node, pool, conn, self.own_sessions, self.backends, share, key)

    @asynccontextmanager
    async def session(
        self, node: Node, role: str | None = None, key: str = ""
    ) -> AsyncIterator[Checkout]:
        """take(), given back (clean) when the block ends."""
        held = await self.take(node, role, key)
        try:
            yield held
        finally:
            await held.give_back()

    async def in_recovery(self, node: Node) -> bool:
        """pg_is_in_recovery() on one of the node's connections; False when it cannot tell."""
        try:
            async with self.session(node) as held:
                return await in_recovery(held.conn)
        except Exception:
            return False


async def in_recovery(conn: AsyncConnection[Any]) -> bool:
    """pg_is_in_recovery() on this connection; False when it cannot tell."""
    try:
        cur = await conn.execute("SELECT pg_is_in_recovery()")
        row = await cur.fetchone()
    except psycopg.Error:
        return False
    return bool(row and row[0])
