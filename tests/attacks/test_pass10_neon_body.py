"""Tenth review pass (attacker): two ways POST /sql's body escapes the rules of every other
JSON body.

1. A JSON object that names a key twice is refused on every route and in the fast lane
   (app/api/json_body.py: "a gateway in front that checks the first would let the second
   run"). POST /sql parses with orjson.loads (app/api/neon.py _parse), which keeps the last:
   `{"query": "SELECT 1 AS checked", "query": "SELECT 2 AS smuggled"}` is answered 200 with
   `smuggled`. (Same for `queries`.)
2. A parameter sent as a JSON object is turned into text with orjson.dumps (neon._params),
   whose depth limit (254) is below orjson.loads' (1024) and below nothing mirrorpool checks
   first (statement._too_deep sees only the resulting string): an object nested 300 deep
   raises orjson.JSONEncodeError ("Recursion limit reached"), a TypeError, not a
   MirrorpoolError: 500 internal with a stack trace in the log, for a read key.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.attacks.conftest import headers, query


async def neon(
    client: httpx.AsyncClient, key: str | None, body: Any, **extra: str
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "text/plain;charset=UTF-8", **extra}
    if key is not None:
        hdrs.update(headers(key))
    return await client.post("/sql", content=content, headers=hdrs)


async def test_a_duplicate_query_key_is_refused(client: httpx.AsyncClient) -> None:
    body = b'{"query": "SELECT 1 AS checked", "query": "SELECT 2 AS smuggled"}'
    response = await neon(client, "write", body)
    assert response.status_code == 400, response.text
    body = b'{"queries": [{"query": "SELECT 1 AS a"}], "queries": [{"query": "SELECT 2"}]}'
    assert (await neon(client, "write", body)).status_code == 400


async def test_a_deeply_nested_object_parameter_is_a_4xx(client: httpx.AsyncClient) -> None:
    deep: Any = 1
    for _ in range(300):
        deep = {"a": deep}
    response = await neon(client, "read", {"query": "SELECT $1::text AS t", "params": [deep]})
    assert 400 <= response.status_code < 500, response.text
    assert (await query(client, "read", "SELECT 1 AS n")).status_code == 200
