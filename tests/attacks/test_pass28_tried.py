"""Twenty-eighth review pass (attacker): what was tried and held.

Code of the database's own that PostgreSQL runs for a statement naming none of it, each
proven on a direct connection first (the function took a session advisory lock):
- a cast between two catalog types whose function is the schema's (a superuser's
  `CREATE CAST (float4 AS text) WITH FUNCTION public.l2t28(float4) AS ASSIGNMENT`) used
  by stored code: a view `SELECT 5::float4::text` read by a read key, and a column default
  `DEFAULT 7::float4` into a text column (the assignment cast) on a write key's INSERT: the
  rule and the default depend on the cast, which counts by the default-closed rule
  (_MAY_HOLD_CODE), so each statement's connection is closed after;
- a rule `ON INSERT ... DO ALSO INSERT INTO` a table whose trigger is the schema's: the
  rule's dependency carries the trigger's table's writing to the table written
  (VIEW_EDGES_SQL);
- an own operator `||(text, int4)` that fits `'order ' || 42` better than pg_catalog's
  textanycat: the operator's name is in the tree;
- `INSERT ... ON CONFLICT DO UPDATE` into a table whose only trigger is `BEFORE UPDATE`:
  any trigger counts the table as written.
Each is followed by the admin key's request: no session advisory lock is left. (float4 to
text, because mirrorpool's own catalog reading casts int8 and int2 to text: that is
test_pass28_catalog_reading_casts.py.) Also tried: `text(42)`, the cast in function
notation, is refused by PostgreSQL (no function text(integer)) before anything runs.
(The holes of this pass: test_pass28_catalog_type_casts.py, the same kind of cast reached
by a request's own `::text`, `||`, quote_literal or assignment;
test_pass28_catalog_reading_casts.py, by mirrorpool's own catalog reading.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, end_sessions_holding, leaves_no_lock
from tests.conftest import as_owner

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOCK = 2829
TAKE = f"IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock({LOCK}); END IF;"
SETUP = (
    "DROP VIEW IF EXISTS public.v28l",
    "DROP TABLE IF EXISTS public.d28l, public.r28, public.log28, public.u28",
    "CREATE OR REPLACE FUNCTION public.l2t28(i float4) RETURNS text LANGUAGE plpgsql AS"
    f" $$ BEGIN {TAKE} RETURN i::varchar; END $$",
    # The view and the default are made once the cast is (fixture below).
    "CREATE OR REPLACE FUNCTION public.trig28() RETURNS trigger LANGUAGE plpgsql AS"
    f" $$ BEGIN {TAKE} RETURN NEW; END $$",
    "CREATE TABLE public.log28 (x int)",
    "CREATE TRIGGER log28t BEFORE INSERT ON public.log28 FOR EACH ROW"
    " EXECUTE FUNCTION public.trig28()",
    "CREATE TABLE public.r28 (x int)",
    "CREATE RULE r28also AS ON INSERT TO public.r28 DO ALSO"
    " INSERT INTO public.log28 VALUES (NEW.x)",
    "CREATE TABLE public.u28 (id int PRIMARY KEY, v text)",
    "CREATE TRIGGER u28t BEFORE UPDATE ON public.u28 FOR EACH ROW EXECUTE FUNCTION public.trig28()",
    "INSERT INTO public.u28 VALUES (1, 'a')",
    "CREATE OR REPLACE FUNCTION public.cat28(a text, b int4) RETURNS text LANGUAGE plpgsql"
    f" AS $$ BEGIN {TAKE} RETURN a || b::varchar; END $$",
    "CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = int4, FUNCTION = public.cat28)",
    "GRANT SELECT, INSERT, UPDATE ON public.r28, public.log28, public.u28 TO PUBLIC",
)
AFTER_CAST = (
    "CREATE VIEW public.v28l AS SELECT 5::float4::text AS t",
    "CREATE TABLE public.d28l (id int, t text DEFAULT 7::float4)",
    "GRANT SELECT ON public.v28l TO PUBLIC",
    "GRANT SELECT, INSERT ON public.d28l TO PUBLIC",
)
TEARDOWN = (
    "DROP VIEW IF EXISTS public.v28l",
    "DROP TABLE IF EXISTS public.d28l, public.r28, public.log28, public.u28",
    "DROP OPERATOR IF EXISTS public.|| (text, int4)",
    "DROP FUNCTION IF EXISTS public.cat28(text, int4)",
    "DROP FUNCTION IF EXISTS public.trig28()",
    "DROP FUNCTION IF EXISTS public.l2t28(float4)",
)


@pytest.fixture(scope="module")
def made(pair: LocalPair) -> Iterator[None]:
    with pair.primary.connect() as conn:
        conn.execute("DROP CAST IF EXISTS (float4 AS text)")
    as_owner(pair, *SETUP)
    with pair.primary.connect() as conn:  # the superuser's (the harness's login)
        conn.execute(
            "CREATE CAST (float4 AS text) WITH FUNCTION public.l2t28(float4) AS ASSIGNMENT"
        )
    as_owner(pair, *AFTER_CAST)
    try:
        yield
    finally:
        as_owner(pair, "DROP VIEW IF EXISTS public.v28l", "DROP TABLE IF EXISTS public.d28l")
        with pair.primary.connect() as conn:
            conn.execute("DROP CAST IF EXISTS (float4 AS text)")
        as_owner(pair, *TEARDOWN)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair, made: None) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked_on(pair, (), ()) as client:  # (once it has read all of it)
        yield client


@pytest.fixture(autouse=True)
def no_lock_left(pair: LocalPair) -> Iterator[None]:
    yield
    end_sessions_holding(pair, LOCK)


@pytest.mark.parametrize(
    ("key", "attack"),
    [
        ("read", "SELECT t FROM v28l"),
        ("write", "INSERT INTO d28l (id) VALUES (1)"),
        ("write", "INSERT INTO r28 VALUES (1)"),
        ("read", "SELECT 'order ' || 42 AS t"),
        ("write", "INSERT INTO u28 VALUES (1, 'b') ON CONFLICT (id) DO UPDATE SET v = 'c'"),
    ],
    ids=[
        "view-over-the-cast",
        "default-through-the-cast",
        "rule-into-a-triggered-table",
        "own-concatenation-operator",
        "on-conflict-update-trigger",
    ],
)
async def test_code_out_of_sight_leaves_no_session_lock(
    served: httpx.AsyncClient, pair: LocalPair, key: str, attack: str
) -> None:
    await leaves_no_lock(served, pair, key, attack)
