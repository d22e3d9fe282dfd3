"""Default closed (issue 13, after pass 21): a relation whose only tie to code of its own is
a dependency on a kind of object no reading of app/sql/schema_code.py names is code too.

The case that was open: a foreign table. Reading one runs its wrapper (postgres_fdw, an
extension's to install), which connects to the remote server and keeps that connection in
the backend, through DISCARD ALL, for the backend's life. What the remote side's code left
in its session there (a session advisory lock, a setting) stays with the pooled connection,
and reaches the next key's reading of any foreign table of that server. Before, the reading
counted none of a foreign table's code: its reading was a pure read (lanes, no reset). Now a
foreign table depends on its foreign server, an object of the database's own that the
reading does not follow, so it counts as code: its connection is closed after, and the
remote session ends with it.

Set up by the superuser (the extension, the server, the user mapping; the service's login
maps to itself over the loopback) and the owner (the remote view and its function, which
takes a session lock only in a session of postgres_fdw's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from psycopg import sql

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import advisory_locks, attacked, query
from tests.conftest import as_owner, login_role
from tests.waiting import eventually_sync

pytestmark = pytest.mark.asyncio(loop_scope="module")

REMOTE = (
    "CREATE OR REPLACE FUNCTION public.far21() RETURNS int LANGUAGE plpgsql AS"
    " $$ BEGIN IF current_setting('application_name') = 'postgres_fdw' THEN"
    " PERFORM pg_try_advisory_lock(2123); END IF; RETURN 1; END $$",
    "CREATE OR REPLACE VIEW public.rv21 AS SELECT public.far21() AS n",
    f"GRANT SELECT ON public.rv21 TO {SERVICE}",
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    role, password = login_role(pair, "lowpriv")
    as_owner(pair, *REMOTE)
    with pair.primary.connect() as conn:  # the wrapper and its server: the superuser's
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgres_fdw")
        conn.execute("DROP SERVER IF EXISTS loop21 CASCADE")
        conn.execute(
            sql.SQL(
                "CREATE SERVER loop21 FOREIGN DATA WRAPPER postgres_fdw"
                " OPTIONS (host '127.0.0.1', port {}, dbname 'postgres')"
            ).format(sql.Literal(str(pair.primary.port)))
        )
        conn.execute(
            sql.SQL(
                "CREATE USER MAPPING FOR {} SERVER loop21 OPTIONS (user {}, password {})"
            ).format(
                sql.Identifier(SERVICE),
                sql.Literal(SERVICE),
                sql.Literal(pair.password_of(SERVICE)),
            )
        )
        conn.execute(
            "CREATE FOREIGN TABLE public.ft21 (n int) SERVER loop21"
            " OPTIONS (schema_name 'public', table_name 'rv21')"
        )
        conn.execute(sql.SQL("GRANT SELECT ON public.ft21 TO {}").format(sql.Identifier(SERVICE)))
    try:
        async with attacked(pair, role, password, seen=True) as client:
            yield client
    finally:
        with pair.primary.connect() as conn:
            conn.execute("DROP SERVER IF EXISTS loop21 CASCADE")
            conn.execute("DROP EXTENSION IF EXISTS postgres_fdw")
        as_owner(pair, "DROP VIEW IF EXISTS public.rv21", "DROP FUNCTION IF EXISTS public.far21()")
        with pair.primary.connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND objid = 2123 AND pid <> pg_backend_pid()"
            )
        eventually_sync(lambda: advisory_locks(pair) == 0, "the remote sessions to end")


@pytest.mark.parametrize("key", ["read", "write"])
async def test_a_foreign_tables_remote_session_goes_with_its_connection(
    served: httpx.AsyncClient, pair: LocalPair, key: str
) -> None:
    """The key's read of the foreign table: the remote view's function takes a session lock
    in postgres_fdw's session. After the admin key's request (on the one pooled connection),
    no session of the service's login holds it: the remote session ended with the local."""
    assert advisory_locks(pair) == 0
    r = await query(served, key, "SELECT n FROM ft21")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[1]], r.text
    assert (await query(served, "admin", "SELECT 1 AS one")).status_code == 200
    assert advisory_locks(pair) == 0, "the foreign table's remote session outlived the request"
