"""One checkout owns a pooled connection's life for one request: taken from the pool of the
request's login on its node, given back clean.

A request runs on the node the cluster picked, on a connection that logged in as the key's
database role (one bounded pool per node and role, app/cluster/node.py) or as the service's
own login. What its statements may have left in the session (app/sql/session.py Effect, read
from their parse trees, or a reported parameter that changed) is undone before the
connection goes back: DISCARD ALL, or closing it. Behind a transaction pooler the session is
not ours, and nothing is reset (app/sql/transaction_pooling.py refuses what would need it).
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.cluster.cluster import Cluster
from app.cluster.node import Node
from app.sql import session
from app.sql.session import Effect


class Checkout:
    """A pooled connection held by one request, and what it needs before it goes back."""

    __slots__ = ("_before", "_pool", "conn", "effect", "node", "own_session")

    def __init__(
        self,
        node: Node,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        conn: AsyncConnection[Any],
        own_session: bool,
    ) -> None:
        self.node = node
        self.conn = conn
        self.effect = Effect.NONE
        self.own_session = own_session
        self._pool = pool
        self._before = session.snapshot(conn)

    def mark(self, effect: Effect) -> None:
        """A statement may have left this in the session."""
        self.effect = max(self.effect, effect)

    async def give_back(self) -> None:
        """Restore the session if needed (close the connection if that fails), then return it
        to its pool."""
        conn = self.conn
        try:
            if self.own_session and not conn.closed:
                needed = self.effect
                if needed is Effect.NONE and session.snapshot(conn) != self._before:
                    needed = Effect.RESET
                try:
                    await session.restore(conn, needed)
                except BaseException:
                    # Cancelled mid-reset: what the session holds is unknown, so it goes.
                    conn.pgconn.finish()
                    raise
        finally:
            await self._pool.putconn(conn)


async def take(
    cluster: Cluster, node: Node, role: str | None, timeout: float | None, own_session: bool
) -> Checkout:
    """A connection of `node` logged in as `role` (None: the service's login)."""
    pool = node.pool if role is None else await node.pool_for(role)
    conn = await cluster.getconn(node, timeout, role)
    return Checkout(node, pool, conn, own_session)
