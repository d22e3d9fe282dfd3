"""Eleventh review pass (attacker): tried and held, kept so they keep holding.

POST /sql: more parameters than PostgreSQL's wire can carry, a placeholder past 65535,
invalid UTF-8 and escaped surrogates in the body, a float parameter JSON cannot carry; where
the key is read from (an invalid bearer token with a valid connection-string key is 401,
the connection string is read on /sql only, not on /v1/query, and nothing of it appears in
the 401s); a read key's batch cannot COMMIT its way out of READ ONLY; a role key's /sql runs
as its role whatever the connection string's user says.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.attacks.conftest import KEYS, headers, query


async def post(client: httpx.AsyncClient, body: bytes, **hdrs: str) -> httpx.Response:
    return await client.post("/sql", content=body, headers={"Content-Type": "text/plain", **hdrs})


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"query": "SELECT $1::text AS a", "params": ["x"] * 70000}).encode(),
        json.dumps({"query": "SELECT $70000::text AS a", "params": ["x"]}).encode(),
        b'{"query": "SELECT 1 AS \xff"}',
        b'{"query": "SELECT \'\\ud800\' AS a"}',
        b'{"query": "SELECT $1::float8 AS a", "params": [1e400]}',
        b'{"query": "SELECT $1::numeric AS a", "params": [123456789012345678901234567890]}',
        json.dumps({"queries": [{"query": "SELECT 1"}] * 101}).encode(),
    ],
    ids=["70000-params", "placeholder-70000", "bad-utf8", "surrogate", "inf", "bigint", "101"],
)
async def test_no_500_on_more_odd_bodies(client: httpx.AsyncClient, body: bytes) -> None:
    r = await post(client, body, **headers("read"))
    assert r.status_code < 500 or r.status_code == 507, r.text
    nxt = await post(client, b'{"query": "SELECT 42 AS n"}', **headers("write"))
    assert nxt.json()["rows"] == [{"n": "42"}], nxt.text


async def test_where_the_key_is_read(client: httpx.AsyncClient) -> None:
    good = f"postgresql://u:{KEYS['write']}@h/db"
    r = await post(
        client,
        b'{"query": "SELECT 1 AS n"}',
        **{"Authorization": "Bearer nope", "Neon-Connection-String": good},
    )
    assert r.status_code == 401 and KEYS["write"] not in r.text, r.text
    r = await client.post(
        "/v1/query", json={"sql": "SELECT 1"}, headers={"Neon-Connection-String": good}
    )
    assert r.status_code == 401 and KEYS["write"] not in r.text, r.text
    r = await post(
        client,
        b'{"query": "SELECT 1 AS n"}',
        **{"Neon-Connection-String": f"postgresql://{KEYS['write']}@h/db"},
    )
    assert r.status_code == 401 and KEYS["write"] not in r.text, r.text


async def test_a_read_keys_batch_cannot_commit_out_of_read_only(
    client: httpx.AsyncClient,
) -> None:
    for first in ("COMMIT", "END", "ROLLBACK", "ABORT", "COMMIT AND CHAIN", "SAVEPOINT s"):
        body = {"queries": [{"query": first}, {"query": "INSERT INTO pub VALUES (77, 'x')"}]}
        r = await post(client, json.dumps(body).encode(), **headers("read"))
        assert 400 <= r.status_code < 500, (first, r.text)
        r = await post(
            client,
            json.dumps(body).encode(),
            **headers("write"),
            **{"Neon-Batch-Read-Only": "true"},
        )
        assert 400 <= r.status_code < 500, (first, r.text)
    count = await query(client, "admin", "SELECT count(*) FROM pub WHERE id = 77")
    assert count.json()["rows"] == [["0"]], count.text


async def test_a_role_key_runs_as_its_role_whatever_the_user(
    client: httpx.AsyncClient, world: dict[str, str]
) -> None:
    r = await post(
        client,
        b'{"query": "SELECT current_user AS u"}',
        **{"Neon-Connection-String": f"postgresql://postgres:{KEYS['role']}@h/postgres"},
    )
    assert r.status_code == 200 and r.json()["rows"] == [{"u": world["role"]}], r.text


@pytest.mark.parametrize("key", ["role", "role2"])
async def test_a_role_pools_styles_survive_the_reset_after_sql(
    client: httpx.AsyncClient, key: str
) -> None:
    sql = "SELECT current_setting('IntervalStyle') AS i, current_setting('DateStyle') AS d"
    for _ in range(2):
        styled = await post(client, json.dumps({"query": sql}).encode(), **headers(key))
        assert styled.json()["rows"] == [{"i": "postgres", "d": "ISO, YMD"}], styled.text
        for other in ("role", "role2"):
            after = await query(client, other, sql)
            assert after.json()["rows"] == [["iso_8601", "ISO, YMD"]], after.text
