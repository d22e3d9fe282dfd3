"""Twenty-eighth review pass (attacker): mirrorpool's own catalog reading runs a cast of the
database's own, on a pool connection that then goes to the next key as it is. Fixed: the
fingerprint casts nothing to text (concat_ws) and says whether the catalog is altered, and
the reading's other queries then close their connections (app/sql/engine.py _ask_catalog).

app/sql/schema_queries.py FINGERPRINT_SQL, which the service runs every
MIRRORPOOL_SCHEMA_REFRESH_S on a pool connection (app/sql/engine.py _ask_catalog), builds
its text with `count(*) || '.' || coalesce(sum(...)::bigint, 0)`: `bigint || text` is
pg_catalog.anytextcat, an SQL function whose body is `$1::pg_catalog.text` (the other
readings have `attnum::text` of an int2 and the like). The queries qualify their tables,
functions and types, but a cast is picked by its two types, and a superuser may make one
between two catalog types (int8 to text has no pg_cast row of its own; PostgreSQL otherwise
converts through the I/O functions, so a new row is used for every such cast):

    superuser: CREATE CAST (int8 AS text) WITH FUNCTION public.b2t28(int8)
               -- b2t28: pg_try_advisory_lock(2830); set_config('app.x28r', 'reading',
               --        false); RETURN i::varchar

From then on every fingerprint runs public.b2t28 in the pooled session it reads on, and
the checkout marks nothing (no statement of a key's is judged), so the connection goes back
to the pool without a reset: the next key's request, any key, finds the session advisory
lock held and the custom setting set (current_setting('app.x28r', true) is 'reading'
where it is NULL on a fresh session). The code also runs in whatever the key before left
in that session (its lastval(), say): the reading forgets nothing before it either.

Root cause: app/sql/engine.py _ask_catalog runs the catalog queries on a pool checkout as
if they ran nothing of the database's own, and the queries rely on implicit and explicit
casts between catalog types (anytextcat's `::text`, `::text` of int2 and oid) that a cast
of the database's own can take over. The safe behaviour: the readings cast nothing through
pg_cast rows a user could add (e.g. format() / pg_catalog output functions instead of
`::text` and `||` of a number), or their connection is closed (or at least reset) after
them, like a statement that may run code of the database's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import advisory_locks, attacked_on, end_sessions_holding, query
from tests.conftest import as_owner

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOCK = 2830
SETUP = (
    "CREATE OR REPLACE FUNCTION public.b2t28(i int8) RETURNS text LANGUAGE plpgsql AS $$"
    f" BEGIN IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock({LOCK});"
    " PERFORM set_config('app.x28r', 'reading', false); END IF; RETURN i::varchar; END $$",
)
TEARDOWN = ("DROP FUNCTION IF EXISTS public.b2t28(int8)",)


@pytest.fixture(scope="module")
def cast_made(pair: LocalPair) -> Iterator[None]:
    """The owner's function, then the cast between two catalog types: the superuser's to
    make (the harness's login)."""
    with pair.primary.connect() as conn:
        conn.execute("DROP CAST IF EXISTS (int8 AS text)")
    as_owner(pair, *SETUP)
    with pair.primary.connect() as conn:
        conn.execute("CREATE CAST (int8 AS text) WITH FUNCTION public.b2t28(int8)")
    try:
        yield
    finally:
        with pair.primary.connect() as conn:
            conn.execute("DROP CAST IF EXISTS (int8 AS text)")
        as_owner(pair, *TEARDOWN)
        end_sessions_holding(pair, LOCK)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair, cast_made: None) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked_on(pair, (), ()) as client:  # (once it has read the catalog)
        yield client


async def test_no_key_finds_a_setting_the_catalog_reading_left(
    served: httpx.AsyncClient,
) -> None:
    """The admin key's first look at a setting nothing of its own defined: NULL on a clean
    session."""
    r = await query(served, "admin", "SELECT current_setting('app.x28r', true) AS x")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[None]], f"the catalog reading's setting reached a key: {r.text}"


async def test_no_key_gets_a_session_lock_the_catalog_reading_took(
    served: httpx.AsyncClient, pair: LocalPair
) -> None:
    """After the read key's request (every key shares the one pooled connection), no
    session advisory lock is held by the service's login."""
    r = await query(served, "read", "SELECT 1 AS one")
    assert r.status_code == 200, r.text
    assert advisory_locks(pair) == 0, "the catalog reading's session lock is on a key's session"
