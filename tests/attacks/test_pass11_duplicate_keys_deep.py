"""Eleventh review pass (attacker): pass 10's duplicate-key check on POST /sql is skipped by
a deep enough nesting elsewhere in the body.

neon._parse reads the body with orjson (nesting up to 1024) and then calls
json_body.check_unique_keys(), which reads it again with Python's json and ignores a
RecursionError ("other faults are the model's to report"). Python's decoder recurses once per
level and stops at the interpreter's recursion limit (1000, less the frames already on the
stack), so a body with an ignored member nested ~1000 deep is read whole by orjson and not at
all by the check: `{"query": "SELECT 1", "x": [[[...]]], "query": "<another>"}` runs the
second query (orjson keeps the last), while a gateway in front that keeps the first saw
`SELECT 1`. The safe behaviour asserted: a 4xx and nothing run, the same as a flat body
naming a key twice; and no 500 for that nesting on the JSON routes either.
"""

from __future__ import annotations

import httpx
import pytest

from tests.attacks.conftest import headers

DEPTH = 1000  # within orjson's 1024, past Python's json


def deep(depth: int = DEPTH) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [990, DEPTH, 1020])
async def test_a_duplicate_query_key_with_a_deep_member_is_refused(
    client: httpx.AsyncClient, depth: int
) -> None:
    body = (
        b'{"query": "SELECT 1 AS seen_by_the_gateway", "x": '
        + deep(depth)
        + b', "query": "SELECT 2 AS ran"}'
    )
    response = await client.post(
        "/sql", content=body, headers={**headers("read"), "Content-Type": "text/plain"}
    )
    assert 400 <= response.status_code < 500, response.text


async def test_a_duplicate_key_in_a_batch_with_a_deep_member_is_refused(
    client: httpx.AsyncClient,
) -> None:
    body = (
        b'{"queries": [{"query": "SELECT 1 AS a", "x": ' + deep() + b', "query": "SELECT 2 AS b"}]}'
    )
    response = await client.post(
        "/sql", content=body, headers={**headers("read"), "Content-Type": "text/plain"}
    )
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize("path", ["/v1/query", "/v1/transaction"])
async def test_a_deep_member_on_the_json_routes_is_a_4xx(
    client: httpx.AsyncClient, path: str
) -> None:
    inner = b'"sql": "SELECT 1", "x": ' + deep()
    body = b"{" + inner + b"}" if path == "/v1/query" else b'{"statements": [{' + inner + b"}]}"
    response = await client.post(
        path, content=body, headers={**headers("read"), "Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
