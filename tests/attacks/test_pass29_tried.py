"""Twenty-ninth review pass (attacker): what was tried and held.
(The hole of this pass: test_pass29_neon_committed_507.py, a 507 after the COMMIT.)

- The catalog fingerprint (app/sql/schema_queries.py FINGERPRINT_SQL) filters temporary
  schemas only for the catalogs with a namespace column: pg_index, pg_attrdef and pg_rewrite
  have none. Tried: a write key's `/v1/transaction` makes a temporary table with a primary
  key (a pg_index row), a default (pg_attrdef), a check, or a temporary view (pg_rewrite),
  then sleeps; the harness reads the fingerprint before and while it sleeps. It held: the
  rows are not committed while the transaction runs, and a `/v1/query` that commits them
  has its connection closed at once (a temporary object), which deletes them again.
- POST /sql batches by a read key with `Neon-Batch-Read-Only: false` and an INSERT: refused
  (the 400 of a database error, sqlstate 25006: the key reads only, whatever the header
  says), and nothing was written.
- POST /sql batches whose answer, summed over its queries, is bigger than
  MIRRORPOOL_MAX_RESPONSE_BYTES (each query under the limit): a 507, not the answer.
- POST /sql with `arrayMode` of odd JSON kinds in a batch's query (a string, a number, an
  object, a list): a 400 with a `message`, or (`"yes"`, which pydantic's lax mode reads as
  true) a 200; never a 500.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from app.devdb import LocalPair
from app.sql.schema_queries import FINGERPRINT_SQL
from tests.attacks.conftest import attacked_on, headers, transaction

SETUP = (
    "CREATE TABLE IF NOT EXISTS public.p29 (id int PRIMARY KEY, v text)",
    "INSERT INTO public.p29 VALUES (1, 'one') ON CONFLICT DO NOTHING",
)
TEARDOWN = ("DROP TABLE IF EXISTS public.p29",)


def fingerprint(pair: LocalPair) -> str:
    with pair.primary.connect() as conn:
        row = conn.execute(FINGERPRINT_SQL).fetchone()
    assert row is not None
    return str(row[0])


async def neon(client: httpx.AsyncClient, key: str, body: object, **extra: str) -> httpx.Response:
    return await client.post(
        "/sql",
        content=json.dumps(body),
        headers={**headers(key), "Content-Type": "text/plain", **extra},
    )


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TEMP TABLE t29 (a int PRIMARY KEY)",
        "CREATE TEMP TABLE t29 (a int DEFAULT 1)",
        "CREATE TEMP TABLE t29 (a int CHECK (a > 0))",
        "CREATE TEMP VIEW t29 AS SELECT 1 AS a",
    ],
    ids=["primary-key", "default", "check", "view"],
)
async def test_temporary_objects_of_a_running_transaction_leave_the_fingerprint(
    pair: LocalPair, ddl: str
) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        before = fingerprint(pair)
        task = asyncio.create_task(transaction(client, "write", ddl, "SELECT pg_sleep(1.5)"))
        await asyncio.sleep(0.8)
        during = fingerprint(pair)
        r = await task
        assert r.status_code == 200, r.text
        assert during == before, f"another session's {ddl!r} changed the fingerprint"


async def test_neon_batch_of_a_read_key_writes_nothing(pair: LocalPair) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        body = {"queries": [{"query": "INSERT INTO p29 VALUES (29, 'read key')", "params": []}]}
        r = await neon(client, "read", body, **{"Neon-Batch-Read-Only": "false"})
        assert r.status_code == 400, r.text  # a database error, in node-postgres' fields
        assert r.json()["code"] == "25006", r.text
        r = await neon(client, "admin", {"query": "SELECT count(*) AS n FROM p29 WHERE id = 29"})
        assert r.status_code == 200, r.text
        assert r.json()["rows"] == [{"n": "0"}]


async def test_neon_batch_over_the_response_size(pair: LocalPair) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN, max_response_bytes=200_000) as client:
        one = {"query": "SELECT repeat('x', 80000) AS v", "params": []}
        r = await neon(client, "read", one)
        assert r.status_code == 200, r.text
        r = await neon(client, "read", {"queries": [one, one, one]})
        assert r.status_code == 507, r.text


@pytest.mark.parametrize("mode", ["yes", 1.5, {"a": 1}, [True]])
async def test_neon_odd_array_mode(pair: LocalPair, mode: object) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        body = {"queries": [{"query": "SELECT 1 AS n", "params": [], "arrayMode": mode}]}
        r = await neon(client, "read", body)
        assert r.status_code in (200, 400), r.text
        if r.status_code == 400:
            assert r.json().get("message"), r.text
