"""One migration runner at a time: a session advisory lock, polled, never waited on.

`pg_advisory_lock()` would wait inside the server, and a CREATE INDEX CONCURRENTLY run by the
lock holder waits for every older transaction, the waiting lock call included: a deadlock.
So the lock is taken with `pg_try_advisory_lock()` on a connection of its own, retried until
a deadline. A crash closes that connection, which releases the lock.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from app.errors import Conflict

LOCK_KEY = int.from_bytes(hashlib.sha256(b"mirrorpool:migrations").digest()[:8], "big", signed=True)
POLL_S = 0.1

_HOLDER_SQL = """
SELECT a.pid, a.application_name, a.backend_start, a.client_addr::text
FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid = ((%(key)s >> 32) & 4294967295)::oid
  AND l.objid = (%(key)s & 4294967295)::oid
"""


async def holder(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
    """Who holds the migration lock: pid, application name, since when; None if free."""
    cur = await conn.execute(_HOLDER_SQL, {"key": LOCK_KEY})
    row = await cur.fetchone()
    if row is None:
        return None
    pid, app, since, addr = row
    return {"pid": pid, "application_name": app, "since": since.isoformat(), "client": addr}


@asynccontextmanager
async def migration_lock(dsn: str, wait_s: float) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Hold the migration lock on a dedicated connection; 409 naming the holder if it stays
    taken for `wait_s` seconds."""
    conn = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, application_name="mirrorpool-migrate-lock"
    )
    try:
        deadline = time.monotonic() + wait_s
        while True:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])
            row = await cur.fetchone()
            if row and row[0]:
                break
            if time.monotonic() >= deadline:
                who = await holder(conn)
                raise Conflict(
                    "another migration run holds the migration lock"
                    + (f" (pid {who['pid']}, {who['application_name']!r})" if who else ""),
                    holder=who,
                )
            await asyncio.sleep(POLL_S)
        try:
            yield conn
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
    finally:
        await conn.close()
