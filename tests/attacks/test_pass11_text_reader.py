"""Eleventh review pass (attacker): POST /sql's chunked text reader (pass 10's fix,
pipeline.Keep(text=True) and text_output.from_reply) in its other spellings, with sessions of
mirrorpool's own and behind PgBouncer, every request on one connection (a pool of one): NULLs,
empty results, commands without rows, a batch with one statement over the limit (507, nothing
of it kept), and a read stopped on the server (a cancel) followed at once by another key's
request on the same connection, which must get its own right answer, not the cancel."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.devdb import OWNER, SERVICE, LocalPair
from tests.attacks.conftest import headers, keys_for, query
from tests.conftest import as_owner, serving_ready, settings_for
from tests.pgbouncer import LocalPgBouncer

MAX_ROWS = 5


@pytest.fixture(scope="module")
def bouncer(pair: LocalPair, work_dir: Path) -> Iterator[LocalPgBouncer]:
    with LocalPgBouncer(
        pair,
        work_dir / f"pass11-bouncer-{uuid.uuid4().hex[:6]}",
        pool_size=int(os.environ.get("MP11_BOUNCER_POOL", "2")),
    ) as b:
        yield b


@pytest.fixture(params=["own", "pgbouncer"])
async def served(
    request: pytest.FixtureRequest, pair: LocalPair, world: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    role = world["role"]
    values: dict[str, Any] = {
        "auth": "keys",
        "pool_min_size": 1,
        "pool_max_size": 1,
        "role_pool_max_size": 1,
        "max_rows": MAX_ROWS,
        "max_response_bytes": 200_000,
        "multiplex": False,
        "health_threshold": 3,
    }
    if request.param == "pgbouncer":
        b: LocalPgBouncer = request.getfixturevalue("bouncer")
        values.update(
            primary_dsn=b.dsn("postgres", user=SERVICE),
            mirror_dsn=None,
            pgbouncer=True,
            migrations_dsn=pair.primary.dsn("postgres", user=OWNER),
            api_keys=[k for k in keys_for(role) if "role" not in k],
        )
    else:
        values.update(api_keys=keys_for(role), role_passwords={role: world["password"]})
    as_owner(pair, "CREATE TABLE IF NOT EXISTS mp11_t (id int PRIMARY KEY, v text)")
    as_owner(pair, "DELETE FROM mp11_t")
    async with serving_ready(settings_for(pair, **values)) as (_, client):
        yield client


async def neon(client: httpx.AsyncClient, key: str, body: Any, **extra: str) -> httpx.Response:
    return await client.post(
        "/sql",
        content=json.dumps(body).encode(),
        headers={**headers(key), "Content-Type": "text/plain;charset=UTF-8", **extra},
    )


async def test_nulls_and_empty_results(served: httpx.AsyncClient) -> None:
    r = await neon(
        served,
        "read",
        {
            "query": "SELECT NULL::int AS a, NULL::text AS b, ''::text AS c, ARRAY[NULL, 1] AS d,"
            " NULL::int[] AS e, ROW(NULL, 'x') AS f"
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [
        {"a": None, "b": None, "c": "", "d": "{NULL,1}", "e": None, "f": "(,x)"}
    ], r.text
    r = await neon(served, "read", {"query": "SELECT 1 AS n WHERE false"})
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [] and r.json()["rowCount"] == 0, r.text
    assert [f["name"] for f in r.json()["fields"]] == ["n"], r.text
    r = await neon(served, "read", {"query": "SELECT"}, **{"Neon-Array-Mode": "true"})
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[]] and r.json()["fields"] == [], r.text
    # exactly max_rows is not over the limit
    r = await neon(served, "read", {"query": f"SELECT g FROM generate_series(1, {MAX_ROWS}) g"})
    assert r.status_code == 200 and len(r.json()["rows"]) == MAX_ROWS, r.text


async def test_a_write_batch_over_the_limit_is_not_committed(served: httpx.AsyncClient) -> None:
    body = {
        "queries": [
            {"query": "INSERT INTO mp11_t VALUES ($1, $2)", "params": ["1", None]},
            {"query": "INSERT INTO mp11_t SELECT g, 'z' FROM generate_series(2, 20) g"},
            {"query": "DELETE FROM mp11_t WHERE id > 1 RETURNING id", "arrayMode": True},
        ]
    }
    r = await neon(served, "write", body)
    assert r.status_code == 507, r.text  # 19 rows RETURNING: over max_rows
    count = await query(served, "admin", "SELECT count(*) FROM mp11_t")
    assert count.json()["rows"] == [["0"]], f"a 507 answer, and the batch committed: {count.text}"


async def test_commands_without_rows(served: httpx.AsyncClient) -> None:
    body = {
        "queries": [
            {"query": "INSERT INTO mp11_t VALUES ($1, $2)", "params": ["1", None]},
            {"query": "UPDATE mp11_t SET v = 'y' WHERE id = 99"},
            {"query": "INSERT INTO mp11_t SELECT g, 'z' FROM generate_series(2, 20) g"},
            {"query": "DELETE FROM mp11_t WHERE id > 3"},
        ]
    }
    r = await neon(served, "write", body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["command"], x["rowCount"], x["rows"]) for x in results] == [
        ("INSERT", 1, []),
        ("UPDATE", 0, []),
        ("INSERT", 19, []),
        ("DELETE", 17, []),
    ], r.text
    after = await neon(served, "read", {"query": "SELECT id, v FROM mp11_t ORDER BY id"})
    assert after.json()["rows"] == [
        {"id": "1", "v": None},
        {"id": "2", "v": "z"},
        {"id": "3", "v": "z"},
    ], after.text


@pytest.mark.parametrize("key", ["write", "read"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
async def test_one_statement_over_the_limit_in_a_batch(
    served: httpx.AsyncClient, where: str, key: str
) -> None:
    big = {"query": "SELECT g FROM generate_series(1, 100000) g"}
    small = [{"query": "INSERT INTO mp11_t VALUES (7, 'x')"}, {"query": "SELECT 1 AS n"}]
    queries = {"first": [big, *small], "middle": [small[0], big, small[1]], "last": [*small, big]}[
        where
    ]
    extra = {}
    if key == "read":
        queries = [q for q in queries if "INSERT" not in q["query"]]
        extra = {"Neon-Batch-Read-Only": "true"}
    r = await neon(served, key, {"queries": queries}, **extra)
    assert r.status_code == 507, r.text
    count = await query(served, "admin", "SELECT count(*) FROM mp11_t WHERE id = 7")
    assert count.json()["rows"] == [["0"]], f"a 507 answer, and the batch committed: {count.text}"
    nxt = await neon(served, "read", {"query": "SELECT 41 + 1 AS n"})
    assert nxt.status_code == 200 and nxt.json()["rows"] == [{"n": "42"}], nxt.text


async def test_many_results_within_rows_but_over_bytes(served: httpx.AsyncClient) -> None:
    q = {"query": "SELECT repeat('x', 30000) AS r FROM generate_series(1, 4)"}
    r = await neon(served, "read", {"queries": [q, q, q]})
    assert r.status_code == 507, r.text
    nxt = await query(served, "admin", "SELECT 42 AS n")
    assert nxt.status_code == 200 and nxt.json()["rows"] == [[42]], nxt.text


@pytest.mark.parametrize("form", ["single", "batch", "alternate"])
async def test_a_stopped_read_does_not_cancel_the_next_request(
    served: httpx.AsyncClient, form: str
) -> None:
    # (a function scan materialises its rows before the first is sent: 2,000,000 of 100
    # bytes are far over every limit, and ready in a tenth of a second, not two)
    huge = "SELECT g, repeat('y', 100) FROM generate_series(1, 2000000) g"
    for i in range(4):
        single = form == "single" or (form == "alternate" and i % 2 == 0)
        body = {"query": huge} if single else {"queries": [{"query": "SELECT 1"}, {"query": huge}]}
        started = time.monotonic()
        r = await neon(served, "read", body)
        assert r.status_code == 507, (i, time.monotonic() - started, r.text)
        after = await query(served, "admin", f"SELECT {i} AS n, pg_sleep(0.02)")
        assert after.status_code == 200, (i, after.text)
        assert after.json()["rows"][0][0] == i, after.text
        after = await neon(served, "write", {"query": f"SELECT {i} AS n"})
        assert after.status_code == 200 and after.json()["rows"] == [{"n": str(i)}], after.text


async def test_a_single_write_over_the_limit_is_not_committed(served: httpx.AsyncClient) -> None:
    r = await neon(
        served,
        "write",
        {"query": "INSERT INTO mp11_t SELECT g, 'w' FROM generate_series(100, 119) g RETURNING id"},
    )
    assert r.status_code == 507, r.text
    count = await query(served, "admin", "SELECT count(*) FROM mp11_t WHERE id >= 100")
    assert count.json()["rows"] == [["0"]], f"a 507 answer, and the write committed: {count.text}"
