"""Twenty-third review pass (attacker): code of the database's own reads another key's
pending table counters on the shared connection. Pass 22 made a statement that may run such
code start with DISCARD SEQUENCES and DEALLOCATE ALL (app/sql/traces.py may_read_traces,
app/sql/plain.py FORGET_TRACES, app/sql/transactions.py), and counts stored code over
pg_stat_xact_* as code (app/sql/schema_code.py stored_code_is_clean: "it runs after
DEALLOCATE ALL"). Neither forgets the backend's pending statistics: PostgreSQL (15 on)
flushes a backend's table counters at most once a second, so until then
pg_stat_get_xact_tuples_inserted() and the pg_stat_xact_* views show the counts of every
earlier transaction on the backend, other keys' among them. No DISCARD undoes them. The
parse tree refuses these names to requests for exactly that reason (README "that no key
replaces or reads mirrorpool's own session state"); a function or a view of the schema's
reads them all the same. Fixed: such a statement is preceded by a unit of its own that calls
pg_stat_force_next_flush(), so the backend flushes the earlier counters as it goes idle,
before the statement runs (app/sql/plain.py flushing); behind PgBouncer every transaction
asks for its own counters' flush when it ends (app/sql/pgbouncer.py flushed).

    write key: INSERT INTO t23p VALUES (1), (2), (3)       (a clean write: no reset after)
    read key:  SELECT ins23p() AS n                          -> 3
    read key:  SELECT n_tup_ins FROM xact23p                 -> 3   (a view over
                                                               pg_stat_xact_user_tables)

The read key learns how many rows another key wrote, which tables it scanned, how many rows
it read (n_tup_fetch, seq_scan, ...): counters of tables the reading key may not even be
granted. Serious for keys sharing a login (read, write, admin); roles log in apart.

The counters are flushed when the backend goes idle at least a second after its last flush,
so each attempt writes twice in a row (the first may flush, the second then stays pending)
and the attack is tried a few times; the safe behaviour is that no attempt sees a count.
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
    "DROP TABLE IF EXISTS public.t23p",
    "CREATE TABLE public.t23p (id int)",
    f"GRANT SELECT, INSERT ON public.t23p TO {SERVICE}",
    "CREATE OR REPLACE FUNCTION public.ins23p() RETURNS bigint LANGUAGE sql AS"
    " $$ SELECT pg_stat_get_xact_tuples_inserted('public.t23p'::regclass) $$",
    "CREATE OR REPLACE VIEW public.xact23p AS SELECT n_tup_ins FROM pg_stat_xact_user_tables"
    " WHERE relid = 'public.t23p'::regclass",
    "GRANT SELECT ON public.xact23p TO PUBLIC",
)
TEARDOWN = (
    "DROP VIEW IF EXISTS public.xact23p",
    "DROP FUNCTION IF EXISTS public.ins23p()",
    "DROP TABLE IF EXISTS public.t23p",
)
TRIES = 6


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        yield client


async def _seen(served: httpx.AsyncClient, reading: str) -> list[int]:
    seen = []
    for _ in range(TRIES):
        for _ in range(2):
            r = await query(served, "write", "INSERT INTO t23p VALUES (1), (2), (3)")
            assert r.status_code == 200, r.text
        got = await query(served, "read", reading)
        assert got.status_code == 200, got.text
        rows = got.json()["rows"]
        seen.append(int(rows[0][0]) if rows and rows[0][0] is not None else 0)
    return seen


async def test_own_function_reads_no_other_keys_pending_counters(
    served: httpx.AsyncClient,
) -> None:
    seen = await _seen(served, "SELECT ins23p() AS n")
    assert not any(seen), f"the read key's function counted the write key's inserts: {seen}"


async def test_own_view_reads_no_other_keys_pending_counters(served: httpx.AsyncClient) -> None:
    seen = await _seen(served, "SELECT n_tup_ins FROM xact23p")
    assert not any(seen), f"the read key's view counted the write key's inserts: {seen}"
