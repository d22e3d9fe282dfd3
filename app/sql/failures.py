"""What a failed statement becomes: the domain error a request raises, the facts reported to
the cluster (which node, the SQLSTATE, whether the node itself may have failed), and the
connection left idle for its checkout."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import AsyncConnection

from app.cluster.cluster import Cluster, Intent
from app.cluster.failover import demoted_writer, may_be_demoted
from app.errors import MirrorpoolError, NodeFailed, NoWriterError
from app.sql import checkout
from app.sql.checkout import Checkouts
from app.sql.errors import database_error


class StatementFailed(psycopg.Error):
    """A transaction failed: the error, and which statement raised it (if one)."""

    def __init__(self, cause: psycopg.Error, index: int | None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.index = index


class Failures:
    """Turns driver errors into the errors requests raise, telling the cluster what failed."""

    def __init__(self, cluster: Cluster, checkouts: Checkouts) -> None:
        self._cluster = cluster
        self._checkouts = checkouts

    async def error(
        self,
        exc: psycopg.Error,
        conn: AsyncConnection[Any] | None,
        node: str,
        intent: Intent,
        index: int | None = None,
    ) -> MirrorpoolError:
        """The error to raise for `exc`. A sign that the node failed, or was turned into a
        standby under us, makes the cluster look at it at once."""
        error = database_error(exc, node, statement_index=index)
        sqlstate = exc.sqlstate
        # pg_is_in_recovery() is asked only when the answer could matter.
        asks = intent == "write" and may_be_demoted(sqlstate)
        in_recovery = await self._in_recovery(node, conn) if asks else None
        demoted = demoted_writer(sqlstate, in_recovery)
        if isinstance(error, NodeFailed) or demoted:
            target = self._cluster.node(node)
            if target is not None:
                self._cluster.report_failure(target)
        if demoted:
            return NoWriterError(
                f"{node} no longer accepts writes (it is a standby); retry shortly"
            )
        return error

    def lost(self, node: str) -> None:
        """A connection to `node` was lost under a request: the cluster looks at it at once."""
        target = self._cluster.node(node)
        if target is not None:
            self._cluster.report_failure(target)

    async def _in_recovery(self, node: str, conn: AsyncConnection[Any] | None) -> bool:
        """pg_is_in_recovery() on this connection, or on another of the node's."""
        if conn is not None:
            return await checkout.in_recovery(conn)
        target = self._cluster.node(node)
        return target is not None and await self._checkouts.in_recovery(target)


async def rollback(conn: AsyncConnection[Any]) -> None:
    """Leave the connection idle after an error, if it still works at all."""
    if conn.closed:
        return
    status = conn.info.transaction_status
    if status in (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR):
        try:
            await conn.execute("ROLLBACK")
        except psycopg.Error:
            await conn.close()
