"""Twenty-fourth review pass (attacker): what was tried and held.

Code of the database's own reading another key's traces on the shared connection, reached
through the routes other than /v1/query (the "forget traces" path on each):
- a function over lastval(), called by a read key on `/v1/query/stream` and on `/sql`
  (Neon's protocol), after a write key's INSERT took a value of a serial: it reads none;
- a view over pg_prepared_statements, read by a read key on `/v1/query/stream` and on
  `/sql`, after a write key's statement was run (and prepared) three times: it lists none
  of it.
(The hole of this pass: test_pass24_random_state.py, the random() generator's state.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import attacked_on, headers, query

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETUP = (
    "DROP TABLE IF EXISTS public.s24t",
    "CREATE TABLE public.s24t (id serial PRIMARY KEY, v text)",
    "CREATE OR REPLACE FUNCTION public.last24t() RETURNS bigint LANGUAGE plpgsql AS"
    " $$ BEGIN RETURN lastval(); EXCEPTION WHEN object_not_in_prerequisite_state THEN"
    " RETURN NULL; END $$",
    "CREATE OR REPLACE VIEW public.ps24t AS SELECT statement FROM pg_prepared_statements",
    f"GRANT SELECT, INSERT ON public.s24t TO {SERVICE}",
    f"GRANT USAGE ON SEQUENCE public.s24t_id_seq TO {SERVICE}",
    "GRANT SELECT ON public.ps24t TO PUBLIC",
)
TEARDOWN = (
    "DROP VIEW IF EXISTS public.ps24t",
    "DROP TABLE IF EXISTS public.s24t",
    "DROP FUNCTION IF EXISTS public.last24t()",
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        yield client


async def rows_by(client: httpx.AsyncClient, route: str, sql: str) -> list[Any]:
    """The rows of `sql`, run by the read key on `route`."""
    if route == "/sql":
        hdrs = {"Content-Type": "text/plain;charset=UTF-8", **headers("read")}
        body = json.dumps({"query": sql, "params": []}).encode()
        r = await client.post("/sql", content=body, headers=hdrs)
        assert r.status_code == 200, r.text
        return [list(row.values()) for row in r.json()["rows"]]
    r = await client.post("/v1/query/stream", json={"sql": sql}, headers=headers("read"))
    assert r.status_code == 200, r.text
    rows: list[Any] = []
    for line in r.text.splitlines():
        event = json.loads(line)
        if "rows" in event:
            rows.extend(event["rows"])
        elif "row" in event:
            rows.append(event["row"])
        elif isinstance(event, list):
            rows.append(event)
    assert "error" not in r.text, r.text
    return rows


@pytest.mark.parametrize("route", ["/v1/query/stream", "/sql"])
async def test_another_keys_lastval_reaches_no_own_code(
    served: httpx.AsyncClient, route: str
) -> None:
    r = await query(served, "write", "INSERT INTO s24t (v) VALUES ('x') RETURNING id")
    assert r.status_code == 200, r.text
    (made,) = r.json()["rows"][0]
    seen = await rows_by(served, route, "SELECT last24t()::int AS last")
    assert len(seen) == 1, seen
    assert str(seen[0][0]) != str(made), f"the read key read the write key's lastval(): {seen}"


@pytest.mark.parametrize("route", ["/v1/query/stream", "/sql"])
async def test_another_keys_prepared_statements_reach_no_own_view(
    served: httpx.AsyncClient, route: str
) -> None:
    text = "SELECT v AS secret_text_24 FROM s24t WHERE id = $1::int"
    for _ in range(3):
        r = await query(served, "write", text, params=[1])
        assert r.status_code == 200, r.text
    listed = await rows_by(served, route, "SELECT statement FROM ps24t")
    assert not any("secret_text_24" in str(s) for s in listed), f"the read key lists {listed}"
