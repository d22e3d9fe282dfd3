"""Found while mending CI (stop 26): behind PgBouncer, a key's deadline broke the next key's
request on the same connection.

At a deadline behind a pooler, mirrorpool sends the cancel first and shuts its socket to the
pooler only once the cancel is delivered (PgBouncer drops a cancel whose client has gone).
The cancel lands, the statement fails with 57014 at once, and the request gave the
connection back to its pool, healthy to every check, before the shut that followed the
cancel. The next request on it, another key's, then read EOF: "server closed the connection
unexpectedly", and with no other node to retry on it answered 503 no-reader. Now a
connection once ended never goes back open (app/sql/checkout.py Checkout.end): it is closed,
after its cancel, and the pool opens another.

A pool of one connection to PgBouncer makes the next request take the attacker's. Whether
PgBouncer closes the cancel's own connection before the statement's 57014 reaches us or
after is up to its scheduling: the test holds that close until the next request's statement
is on its way (or a second has passed), the order CI met, so without the fix it fails every
time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from psycopg import pq

from app.cluster import backends
from app.devdb import LocalPair
from tests.attacks.conftest import behind_pgbouncer, query, transaction

ROUNDS = 1


@pytest.fixture
async def one_connection(
    pair: LocalPair, work_dir: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    # (the catalog's reading each second would take the connection before the next request
    # does)
    async with behind_pgbouncer(pair, work_dir, (), (), schema_refresh_s=3600) as (_, app, c):
        yield app, c


async def test_a_keys_deadline_does_not_break_the_next_keys_request_on_its_connection(
    one_connection: tuple[FastAPI, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client = one_connection
    pool = app.state.cluster.writer.pool
    delivered, take = backends._send_cancel, pool.getconn
    taken: list[Any] = []

    async def getconn(timeout: float | None = None) -> Any:
        conn = await take(timeout)
        taken.append(conn)
        return conn

    def sent() -> bool:
        return any(c.pgconn.transaction_status == pq.TransactionStatus.ACTIVE for c in taken)

    async def closed_after_the_answer(cancel: pq.abc.PGcancelConn) -> None:
        taken.clear()
        await delivered(cancel)
        # Held until the next request's statement is on its way on the connection it took
        # (with the fix: one opened after this one is closed), or for a second.
        until = time.monotonic() + 1.0
        # (polled: libpq tells no one that a query went out)
        while not sent() and time.monotonic() < until:  # noqa: ASYNC110
            await asyncio.sleep(0.001)

    monkeypatch.setattr(pool, "getconn", getconn)
    monkeypatch.setattr(backends, "_send_cancel", closed_after_the_answer)
    for round_ in range(ROUNDS):
        attack = await transaction(
            client,
            "read",
            "SET LOCAL statement_timeout = 0",
            "SELECT pg_sleep(30)",
            timeout_ms=50,
        )
        assert attack.status_code == 504, attack.text
        victim = await query(client, "admin", "SELECT 1 AS one FROM pg_sleep(0.2)")
        assert victim.status_code == 200, f"round {round_ + 1}: {victim.text}"
        assert victim.json()["rows"] == [[1]]
