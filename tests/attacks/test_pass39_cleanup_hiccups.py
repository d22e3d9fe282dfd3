"""Pass 39: behind PgBouncer, a statement timeout of 1 ms that the database's code leaves in
the session, and two hiccups (the backend held up for a few ms, as a busy machine does at
random, or another session's cancel), let an unclean server session go back to the pooler:
the next key ran on it.

    owner:  leave39(), SECURITY DEFINER: CREATE TEMP TABLE c39; set_config('statement_timeout',
            '1', false) (a session default, kept at the COMMIT)
    key A:  SELECT leave39()                          -> 200
            (the cleanup after its COMMIT, then the unit that ends an unclean session, each
            held up once past 1 ms by a proxy between mirrorpool and PgBouncer)
    key B:  SELECT seen39()                           (the pooler's one server connection)

The cleanup's first statement times out (1 ms) and the cleanup fails, its RESET ALL rolled
back with it. The unit that is to end the session then runs under the same 1 ms: its first
statement timed out too, before the DO block whose handler ends the session on any error
began. The backend lived, every Sync answered, and PgBouncer gave it to B with A's temporary
table. Pass 39's helper measured the same without any proxy, on PostgreSQL 15 directly: the
ending unit under a 1 ms timeout let its backend live in 1 run out of 300.

Fixed (app/sql/pgbouncer.py finish): right after the end, a unit of its own, which commits
whatever the cleanup then does, sets exit_on_error for the session. From there on any error
ends the backend, a cancel or a timeout included, wherever it lands; the cleanup's RESET ALL
turns it off again only in a cleanup that succeeds. An unclean session now takes three
hiccups in a row (that unit's own statement, the cleanup, the ending unit) where it took two.

The test holds up every pair of statements after A's COMMIT, with A's answers read 10 ms
late (mirrorpool's own end of an unclean session, its shut of the socket, then comes after
the pooler took the server back): none may leave B on A's session with A's table."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import httpx

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import pgbouncer_settings, query
from tests.conftest import as_owner, login_role, serving_ready, settings_for
from tests.pgbouncer import LocalPgBouncer
from tests.stalling_proxy import StallingProxy, stalling_proxy

SETUP = (
    "CREATE FUNCTION leave39() RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN"
    " CREATE TEMP TABLE IF NOT EXISTS c39 (x int);"
    " PERFORM set_config('statement_timeout', '1', false); RETURN 1; END $$",
    "CREATE FUNCTION seen39() RETURNS text LANGUAGE sql AS"
    " $$ SELECT (to_regclass('pg_temp.c39') IS NOT NULL)::text $$",
)
TEARDOWN = ("DROP FUNCTION IF EXISTS leave39()", "DROP FUNCTION IF EXISTS seen39()")


async def test_no_pair_of_hiccups_after_the_commit_leaves_an_unclean_session(
    pair: LocalPair, work_dir: Path
) -> None:
    role, _ = login_role(pair, "lowpriv")
    folder = work_dir / f"bouncer-{uuid.uuid4().hex[:6]}"
    with LocalPgBouncer(pair, folder, pool_size=1) as b:
        as_owner(pair, *SETUP)
        try:
            async with stalling_proxy(b.port) as proxy:
                dsn = b.dsn("postgres", user=SERVICE).replace(
                    f"port={b.port}", f"port={proxy.port}"
                )
                settings = settings_for(pair, **pgbouncer_settings(pair, dsn, role))
                async with serving_ready(settings) as (_, client):
                    await a_then_b(client, proxy, set())
                    statements = len(proxy.after_end)
                    assert statements > 3, proxy.after_end
                    for stalls in itertools.combinations(range(statements), 2):
                        await a_then_b(client, proxy, set(stalls))
        finally:
            as_owner(pair, *TEARDOWN)


# A's own statements run under the 1 ms its code sets: its COMMIT starts that timeout at its
# Parse, and PostgreSQL disarms it only when the COMMIT's Execute ends the block (the commit's
# own work, deferred triggers included, runs with none). A backend descheduled for a
# millisecond between the two (a busy machine; twice in the recorded runs, about 1 round in
# 300) is cancelled, as the code asked: answered 504 with 57014, its transaction rolled
# back. That round is tried again, up to ATTEMPTS times, so each pair of hiccups still
# follows a COMMIT that succeeded. B's own session never had the 1 ms (B sets none, and
# follows a clean session or a new one), so the 57014 is always A's own timeout.
ATTEMPTS = 10
CANCELLED = "57014"


async def a_then_b(client: httpx.AsyncClient, proxy: StallingProxy, stalls: set[int]) -> None:
    for _ in range(ATTEMPTS):
        proxy.stall_after = stalls
        proxy.reply_delay_s = 0.01 if stalls else 0.0
        a = await query(client, "write", "SELECT leave39()", timeout_ms=5000)
        proxy.stall_after, proxy.reply_delay_s = set(), 0.0
        held = [proxy.after_end[i] for i in sorted(stalls) if i < len(proxy.after_end)]
        b = await query(client, "read", "SELECT seen39()", timeout_ms=5000)
        assert b.status_code == 200, f"held up after {held}: {b.text}"
        assert b.json()["rows"] == [["false"]], f"B on A's session, held up after {held}"
        if a.status_code != 504 or a.json().get("sqlstate") != CANCELLED:
            break
    assert a.status_code == 200, a.text
