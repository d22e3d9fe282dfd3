"""Twenty-second review pass (attacker): on sessions of mirrorpool's own, code of the
database's own reads what another key's requests left in the pooled session before its
connection is closed after it. Closing after own code keeps what that code leaves from the
next key; nothing kept what the previous key left from that code. Fixed: before a statement
that may run such code (app/sql/traces.py may_read_traces) the connection runs DISCARD
SEQUENCES and DEALLOCATE ALL in the statement's own round trip (app/sql/transactions.py),
and stored code that reads pg_prepared_statements counts as code (app/sql/schema_code.py).

1. The session's sequence values. A write key's INSERT into a serial table runs nextval()
   from the column's default, stored code counted clean (app/sql/schema_code.py
   STORED_CLEAN; app/sql/schema_watch.py: "whose only trace, currval/lastval, is read by no
   key"), so its connection goes back as it is. DISCARD SEQUENCES runs only before a
   statement whose own tree names currval or lastval (app/sql/session.py
   reads_sequence_state); a function of the database's own returning lastval() is read by
   name only:

       write key: INSERT INTO s22s (v) VALUES ('x') RETURNING id     -> 7
       read key:  SELECT last22s()                                   -> 7

   The read key learns the id of another key's last row (how many orders it makes, and
   which one is its), and a function that does `currval('s22s_id_seq')` the same.

2. mirrorpool's own prepared statements. A text a key ran twice is prepared by name on the
   connection (app/sql/multiplex.py, pipeline); the parse tree refuses
   `pg_prepared_statements` by name because it "would list other keys' SQL". A view of the
   schema's over it is not refused: the read key lists the write key's statements.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, query

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETUP = (
    "DROP TABLE IF EXISTS public.s22s",
    "CREATE TABLE public.s22s (id serial PRIMARY KEY, v text)",
    "CREATE OR REPLACE FUNCTION public.last22s() RETURNS bigint LANGUAGE plpgsql AS"
    " $$ BEGIN RETURN lastval(); EXCEPTION WHEN object_not_in_prerequisite_state THEN"
    " RETURN NULL; END $$",
    "CREATE OR REPLACE VIEW public.ps22s AS SELECT statement FROM pg_prepared_statements",
    f"GRANT SELECT, INSERT ON public.s22s TO {SERVICE}",
    f"GRANT USAGE ON SEQUENCE public.s22s_id_seq TO {SERVICE}",
    "GRANT SELECT ON public.ps22s TO PUBLIC",
)
TEARDOWN = (
    "DROP VIEW IF EXISTS public.ps22s",
    "DROP TABLE IF EXISTS public.s22s",
    "DROP FUNCTION IF EXISTS public.last22s()",
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        yield client


async def test_another_keys_lastval_reaches_no_own_code(served: httpx.AsyncClient) -> None:
    r = await query(served, "write", "INSERT INTO s22s (v) VALUES ('x') RETURNING id")
    assert r.status_code == 200, r.text
    (made,) = r.json()["rows"][0]
    seen = await query(served, "read", "SELECT last22s()::int AS last")
    assert seen.status_code == 200, seen.text
    assert seen.json()["rows"] != [[made]], "the read key read the write key's lastval()"


async def test_another_keys_prepared_statements_reach_no_own_view(
    served: httpx.AsyncClient,
) -> None:
    text = "SELECT v AS secret_text_22 FROM s22s WHERE id = $1::int"
    for _ in range(3):
        r = await query(served, "write", text, params=[1])
        assert r.status_code == 200, r.text
    seen = await query(served, "read", "SELECT statement FROM ps22s")
    assert seen.status_code == 200, seen.text
    listed = [row[0] for row in seen.json()["rows"]]
    assert not any("secret_text_22" in s for s in listed), f"the read key lists {listed}"
