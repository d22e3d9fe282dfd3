"""Thirty-seventh review pass (attacker), its hole: behind PgBouncer, a cleanup cut short
must end its server session (unit 3, _CLEAN_OR_END_SQL, terminates the backend unless unit 2
marked it clean, and on any error of its own). It does not when the code left a role that
may not signal the service's backend: unit 3's pg_terminate_backend(pg_backend_pid()) is
checked against the current role, which the failed unit 2 (its RESET ROLE rolled back with
it) left as the code set it.

    deploy:  a group role app37 (NOLOGIN, nothing privileged: not refused at start-up)
             granted to the service's login, as roles are for shared grants
    owner:   table parent37; make37(), SECURITY DEFINER: CREATE TEMP TABLE c37 ()
             INHERITS (parent37); leave37(), SECURITY INVOKER (SET ROLE is refused in a
             definer): make37(), set_config('role', 'app37', false), pg_sleep(0.5)
    key A:   SELECT leave37()
    other:   LOCK TABLE parent37 IN ACCESS EXCLUSIVE MODE while A's function sleeps, held
    A's cleanup: DISCARD TEMP waits for the parent: lock timeout, unit 2 fails and rolls
             back (role stays app37); unit 3: no mark, pg_terminate_backend as app37,
             who is neither a member of <service> nor of pg_signal_backend: ERROR; its
             handler's pg_terminate_backend: the same ERROR, uncaught. Unit 3 fails, the
             backend lives, every Sync is answered: PgBouncer takes the server as ready.
    key B:   SELECT probe37() (the only server connection: A's)

Observed: B ("read") runs on A's backend (same pid) as current_user app37, A's role, with
A's temporary child c37 still there (and whatever else A's code left). Expected: A's server
session ended (or B on a clean one, as the service's login).

Suspected cause: unit 3 relies on the current role being able to signal its own backend;
after a failed unit 2 the role is the code's (RESET ROLE went with the unit). Ending the
session needs to not depend on the current role (e.g. RESET ROLE / SET ROLE NONE first in
unit 3, or a failure of unit 3 itself also closing the server: it cannot, PgBouncer already
took every Sync as answered).

Fixed (app/sql/pgbouncer.py _CLEAN_OR_END_SQL): the unit goes back to the login's own role
(set_config('role', 'none')) before it tests the mark, and again in its handler."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.test_pass37_tried import cut_short_cleanups_end_the_session

ROLE = "app37"
SETUP = (
    "CREATE TABLE parent37 (x int)",
    f"GRANT SELECT ON parent37 TO {SERVICE}",
    "CREATE FUNCTION make37() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$"
    " BEGIN CREATE TEMP TABLE c37 () INHERITS (public.parent37); END $$",
    "CREATE FUNCTION leave37() RETURNS int LANGUAGE plpgsql AS $$"
    f" BEGIN PERFORM public.make37(); PERFORM pg_catalog.set_config('role', '{ROLE}', false);"
    " PERFORM pg_catalog.pg_sleep(0.5); RETURN pg_catalog.pg_backend_pid(); END $$",
    "CREATE FUNCTION probe37() RETURNS text LANGUAGE sql AS $$SELECT"
    " pg_catalog.pg_backend_pid()::text || ' ' || current_user::text || ' '"
    " || (pg_catalog.to_regclass('pg_temp.c37') IS NOT NULL)::text$$",
)
TEARDOWN = (
    "DROP FUNCTION IF EXISTS leave37()",
    "DROP FUNCTION IF EXISTS probe37()",
    "DROP FUNCTION IF EXISTS make37()",
    "DROP TABLE IF EXISTS parent37 CASCADE",
)


@pytest.fixture
def group_role(pair: LocalPair) -> Iterator[None]:
    """app37, granted to the service's login (roles are the cluster's: the superuser's)."""
    with pair.primary.connect() as conn:
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")
        conn.execute(f"CREATE ROLE {ROLE} NOLOGIN")
        conn.execute(f"GRANT {ROLE} TO {SERVICE}")
    yield
    with pair.primary.connect() as conn:
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")


ROUNDS = 4


async def test_a_failed_cleanup_under_a_role_that_cannot_signal_reaches_the_next_key(
    pair: LocalPair, work_dir: Path, group_role: None
) -> None:
    await cut_short_cleanups_end_the_session(pair, work_dir, SETUP, TEARDOWN, ROUNDS)


pytestmark = pytest.mark.timeout(30)
