"""Thirty-second review pass (attacker): behind PgBouncer, code of the database's own that
runs at the COMMIT and lifts its own limits runs on after the request's deadline, holding its
transaction (its locks, its snapshot) on the server: mirrorpool's cancel never reaches it.
Fixed: behind a pooler the socket is shut only once the cancel has been delivered
(app/cluster/backends.py end, `pooled`).

Pass 31's fix keeps the request's SET LOCAL lock_timeout and
client_connection_check_interval for the COMMIT (app/sql/pgbouncer.py: the cleanup before the
COMMIT resets no setting). But they are the transaction's settings, and code at the COMMIT
can set them again for itself: a deferred constraint trigger that re-defers its next event
past the cleanup (pass 26's SET CONSTRAINTS ALL DEFERRED; INSERT) runs, at the COMMIT,

    PERFORM set_config('client_connection_check_interval', '0', true);
    PERFORM set_config('lock_timeout', '0', true);
    PERFORM pg_sleep(8);      -- or any lock wait: it now waits as long as the lock is held

    write key: INSERT INTO t32 VALUES (2)  with timeout_ms = 300   -> 503 after 1.3 s
    server:    4 s later the backend still sleeps in its COMMIT (and would commit after)

On sessions of our own the same trigger is stopped within a second (test_pass32_tried.py):
app/cluster/backends.py Backends.end sends psycopg's cancel request, and Backends.hold's
watcher terminates a backend that runs on. Behind PgBouncer neither works:
- Backends.end shuts the socket first (`shut(conn)`) and sends the cancel afterwards, in
  the background. PgBouncer, seeing its client go, drops it (and closes the server
  connection, which the backend notices only by the client check it has just turned off);
  the cancel then comes with a cancel key PgBouncer no longer knows, and is dropped. A
  cancel sent before the close is forwarded and stops the COMMIT's wait at once (57014;
  test_pass32_tried.py test_behind_pgbouncer_only_a_cancel_before_the_close_reaches_the_commit).
- The pid mirrorpool knows is PgBouncer's, not the server backend's: nothing is terminated.

Root cause: app/cluster/backends.py Backends.end: `shut(conn)` before `_send_cancel(cancel)`,
which behind a pooler makes the cancel useless; and behind PgBouncer no other way ends a
server backend whose client mirrorpool gave up on.

The safe behaviour: behind PgBouncer the cancel reaches the pooler while its client is still
linked (send it, and let it be delivered, before the socket is shut), so the backend stops
within a few seconds of the deadline whatever the code at the COMMIT set for itself; the
backend does not outlive the request with its locks.

Set up: the service's login behind a PgBouncer with one server connection.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import behind_one_server_connection, end_sleepers
from tests.attacks.test_pass32_tried import COMMIT_SETUP, COMMIT_TEARDOWN, outlived_by

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_code_at_the_commit_that_lifts_its_limits_is_stopped_behind_pgbouncer(
    pair: LocalPair, work_dir: Path
) -> None:
    async with behind_one_server_connection(pair, work_dir, COMMIT_SETUP, COMMIT_TEARDOWN) as c:
        try:
            left = await outlived_by(c, pair, "INSERT INTO t32 VALUES (2)")
        finally:
            end_sleepers(pair)
        assert left == 0, (
            f"behind PgBouncer the trigger's wait still ran {left:.1f} s after the request's"
            " answer (timeout_ms 300): mirrorpool's cancel came after its socket was shut"
        )
