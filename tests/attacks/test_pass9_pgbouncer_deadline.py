"""Ninth review pass (attacker): behind PgBouncer, mirrorpool's deadline shuts its socket to
the pooler, not to the server. A request's own `SET LOCAL statement_timeout = 0` then leaves
the server connection (one of PgBouncer's few, shared by every client) running after the 504,
unless PgBouncer drops the server connection and client_connection_check_interval (SET LOCAL
at BEGIN behind PgBouncer) stops the backend. Checked: another client's next request is
served, and the sleeping backend is gone, within a few seconds."""

from __future__ import annotations

import time

import httpx

from app.devdb import LocalPair
from tests.attacks.conftest import query, transaction
from tests.attacks.test_pgbouncer_sessions import behind, bouncer  # noqa: F401


def sleepers(pair: LocalPair) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%'"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


async def test_a_request_past_its_deadline_does_not_hold_the_poolers_server_connection(
    behind: httpx.AsyncClient,  # noqa: F811
    pair: LocalPair,
) -> None:
    attack = await transaction(
        behind, "read", "SET LOCAL statement_timeout = 0", "SELECT pg_sleep(30)", timeout_ms=300
    )
    assert attack.status_code in (400, 504), attack.text
    started = time.monotonic()
    victim = await query(behind, "admin", "SELECT 1 AS one")
    waited = time.monotonic() - started
    assert victim.status_code == 200, victim.text
    assert waited < 5, f"another client waited {waited:.1f} s for the pooler's connection"
    # (polled, not slept: the backend should notice its closed socket within a second)
    gone_by = time.monotonic() + 5
    while sleepers(pair) and time.monotonic() < gone_by:
        await behind.get("/health/live")
    left = sleepers(pair)
    assert left == 0, (
        f"the attacker's statement still runs on the server {time.monotonic() - started:.1f} s"
        " after its 504"
    )
