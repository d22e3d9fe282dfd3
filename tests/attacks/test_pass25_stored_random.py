"""Twenty-fifth review pass (attacker): random() drawn by stored code counted clean. Fixed:
stored code that calls random() is not clean (app/sql/schema_code.py stored_code_is_clean),
so a statement reaching it counts as running code: it is reseeded first, takes no lane, and
behind PgBouncer gets the cleanup.

Pass 24's fix reseeds random() before a statement that may draw from it
(app/sql/traces.py draws_random): one that calls random() by name, or that may run code of
the database's own (may_read_traces). But stored code that calls only catalog functions
is judged clean (app/sql/schema_code.py stored_code_is_clean, STORED_CLEAN), and random()
is one of them (app/sql/catalog.py HARMLESS_VOLATILE): a view `SELECT random() ...`, or a
column default `DEFAULT random()`, makes its relation no code at all. A statement reading
the view, or inserting into the table, names no random() and no code: it is not reseeded
(and the view's reading even takes a lane). So:
- a read key reads the view, four values, cracks the generator's state (pass 24's
  `crack`) and runs it backwards: the random() value another key drew just before on the
  connection (reseeded, but the reseed only hides what came before it);
  behind PgBouncer too (the transaction's BEGIN reseeds only for draws_random, and
  pgbouncer.py clean_up only after code);
- a write key's row made by a `DEFAULT random()` (a coupon code, a token) is drawn from a
  state a read key read just before through the view: the read key foresees it.

Root cause: app/sql/traces.py draws_random only looks at the tree's own calls
(maybe_called) and may_read_traces; app/sql/schema_code.py stored_code_is_clean counts
random() (STORED_CLEAN includes HARMLESS_VOLATILE) as clean, so nothing says a view or a
default draws from the generator. The safe behaviour: stored code that calls random()
counts as drawing from it (its relation then reseeds the statement, and keeps it out of the
lanes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from app.devdb import LocalPair
from tests.attacks.conftest import attacked_on, behind_one_server_connection, query, schema_seen
from tests.attacks.test_pass24_random_state import as_random, back, crack, high_bits, step

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETUP = (
    "DROP VIEW IF EXISTS public.r25v",
    "DROP TABLE IF EXISTS public.r25coupons",
    "CREATE VIEW public.r25v AS SELECT random() AS r FROM generate_series(1, 4) AS g(i)",
    "CREATE TABLE public.r25coupons (id int PRIMARY KEY, code float8 DEFAULT random())",
    "GRANT SELECT ON public.r25v TO PUBLIC",
    "GRANT SELECT, INSERT ON public.r25coupons TO PUBLIC",
)
TEARDOWN = (
    "DROP VIEW IF EXISTS public.r25v",
    "DROP TABLE IF EXISTS public.r25coupons",
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def behind(pair: LocalPair, work_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with behind_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as client:
        await schema_seen(client)
        yield client


async def state_through_view(client: httpx.AsyncClient, key: str = "read") -> tuple[int, int]:
    """The generator's state before the view's four draws, as `key` reads it."""
    r = await query(client, key, "SELECT r FROM r25v")
    assert r.status_code == 200, r.text
    return crack([high_bits(float(row[0])) for row in r.json()["rows"]])


async def test_a_view_over_random_does_not_give_another_keys_earlier_value(
    served: httpx.AsyncClient,
) -> None:
    r = await query(served, "admin", "SELECT random() AS r")
    assert r.status_code == 200, r.text
    victims = float(r.json()["rows"][0][0])
    s0, s1 = await state_through_view(served)
    guessed = as_random(step(*back(s0, s1))[0])
    assert guessed != victims, "a read key computed, through a view, another key's random()"


async def test_a_default_random_of_another_key_is_not_foreseen(
    served: httpx.AsyncClient,
) -> None:
    s0, s1 = await state_through_view(served)
    for _ in range(4):
        _, s0, s1 = step(s0, s1)
    foreseen = as_random(step(s0, s1)[0])
    r = await query(served, "write", "INSERT INTO r25coupons (id) VALUES (1) RETURNING code")
    assert r.status_code == 200, r.text
    code = float(r.json()["rows"][0][0])
    assert code != foreseen, "a read key foresaw the coupon code another key's insert drew"


async def test_behind_pgbouncer_a_view_over_random_gives_no_earlier_value(
    behind: httpx.AsyncClient,
) -> None:
    r = await query(behind, "admin", "SELECT random() AS r")
    assert r.status_code == 200, r.text
    victims = float(r.json()["rows"][0][0])
    s0, s1 = await state_through_view(behind)
    guessed = as_random(step(*back(s0, s1))[0])
    assert guessed != victims, "behind PgBouncer, a view gave a read key another key's random()"


async def test_stored_random_keeps_the_connection(served: httpx.AsyncClient) -> None:
    """Reseeded, not closed: the view's reading and the default's insert are followed by a
    request on the same backend (the attacks' keys share one pooled connection)."""
    r = await query(served, "read", "SELECT pg_backend_pid() AS pid, r FROM r25v")
    assert r.status_code == 200, r.text
    after = await query(served, "read", "SELECT pg_backend_pid() AS pid")
    assert after.json()["rows"][0][0] == r.json()["rows"][0][0]
    w = await query(
        served, "write", "INSERT INTO r25coupons (id) VALUES (2) RETURNING pg_backend_pid()"
    )
    assert w.status_code == 200, w.text
    after = await query(served, "read", "SELECT pg_backend_pid() AS pid")
    assert after.json()["rows"][0][0] == w.json()["rows"][0][0]
