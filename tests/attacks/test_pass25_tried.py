"""Twenty-fifth review pass (attacker): what was tried and held.

The reseed of random() (pass 24's fix, app/sql/traces.py draws_random) on other paths and
spellings; in each, a key drew a random() value, then the read key drew four and cracked
the generator's state (pass 24's `crack`): run backwards it gives no value the first key
drew, and run forwards no value the first key draws next (forwards: named queries only;
the victim's own reseed guards that direction whatever the attacker spelt).
- a named query (`POST /v1/queries/{name}`, read_only) drawing random(), as the attacker
  and as the victim;
- random() spelled otherwise in a lane-eligible read: `"random"()`, `pg_catalog.random()`,
  `"pg_catalog"."random"()`;
- random() in the second statement of a read key's /v1/transaction;
- random() drawn by a function of the database's own (counted as code: reseeded).
- TABLESAMPLE BERNOULLI and SYSTEM without REPEATABLE do not draw from random()'s generator
  (PostgreSQL 15 seeds them from the backend's global generator, pg_global_prng_state,
  which no SQL function reads or sets): after the same setseed(), random() gives the same
  value with or without a sample scan in between.
(The hole of this pass: test_pass25_stored_random.py, random() in a view or a default.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from app.devdb import LocalPair
from tests.attacks.conftest import attacked_on, headers, query, transaction
from tests.attacks.test_pass24_random_state import as_random, back, crack, high_bits, step

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETUP = (
    "DROP TABLE IF EXISTS public.t25s",
    "CREATE TABLE public.t25s AS SELECT g AS i FROM generate_series(1, 2000) AS g",
    "CREATE OR REPLACE FUNCTION public.own25r() RETURNS float8 LANGUAGE sql AS"
    " $$ SELECT random() $$",
    "GRANT SELECT ON public.t25s TO PUBLIC",
)
TEARDOWN = (
    "DROP TABLE IF EXISTS public.t25s",
    "DROP FUNCTION IF EXISTS public.own25r()",
)
FOUR = "SELECT {} AS r FROM generate_series(1, 4)"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    pair: LocalPair, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    queries: Path = tmp_path_factory.mktemp("queries25")
    (queries / "draw4.sql").write_text("-- read_only: true\n" + FOUR.format("random()"))
    (queries / "draw1.sql").write_text("-- read_only: true\nSELECT random() AS r")
    async with attacked_on(pair, SETUP, TEARDOWN, queries_dir=queries) as client:
        yield client


def values(r: httpx.Response) -> list[float]:
    assert r.status_code == 200, r.text
    return [float(row[0]) for row in r.json()["rows"]]


async def named(client: httpx.AsyncClient, key: str, name: str) -> list[float]:
    return values(await client.post(f"/v1/queries/{name}", json={}, headers=headers(key)))


def earlier(draws: list[float]) -> float:
    """The value the generator gave just before these four."""
    s0, s1 = crack([high_bits(v) for v in draws])
    return as_random(step(*back(s0, s1))[0])


def later(draws: list[float]) -> float:
    """The value the generator gives just after these four."""
    s0, s1 = crack([high_bits(v) for v in draws])
    for _ in range(4):
        _, s0, s1 = step(s0, s1)
    return as_random(step(s0, s1)[0])


async def test_named_queries_reseed(served: httpx.AsyncClient) -> None:
    (victims,) = await named(served, "admin", "draw1")
    assert earlier(await named(served, "read", "draw4")) != victims
    foreseen = later(await named(served, "read", "draw4"))
    (victims,) = await named(served, "admin", "draw1")
    assert victims != foreseen


@pytest.mark.parametrize(
    "spelling", ['"random"()', "pg_catalog.random()", '"pg_catalog"."random"()', "own25r()"]
)
async def test_spellings_of_random_reseed(served: httpx.AsyncClient, spelling: str) -> None:
    (victims,) = values(await query(served, "admin", "SELECT random() AS r"))
    assert earlier(values(await query(served, "read", FOUR.format(spelling)))) != victims


async def test_random_in_a_later_statement_of_a_transaction_reseeds(
    served: httpx.AsyncClient,
) -> None:
    (victims,) = values(await query(served, "admin", "SELECT random() AS r"))
    r = await transaction(served, "read", "SELECT 1", FOUR.format("random()"))
    assert r.status_code == 200, r.text
    draws = [float(row[0]) for row in r.json()["results"][1]["rows"]]
    assert earlier(draws) != victims


@pytest.mark.parametrize("method", ["BERNOULLI", "SYSTEM"])
async def test_a_sample_scan_draws_nothing_from_random(
    served: httpx.AsyncClient, method: str
) -> None:
    seed = "SELECT setseed(0.25)"
    sample = f"SELECT count(*) FROM t25s TABLESAMPLE {method} (50)"
    draw = "SELECT random() AS r"
    plain = await transaction(served, "write", seed, draw)
    sampled = await transaction(served, "write", seed, sample, draw)
    assert plain.status_code == 200, plain.text
    assert sampled.status_code == 200, sampled.text
    assert plain.json()["results"][1]["rows"] == sampled.json()["results"][2]["rows"]
