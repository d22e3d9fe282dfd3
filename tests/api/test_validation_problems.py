"""Validation problems read the same on every route: a JSON path into the body and a plain
message, whichever way (the fast answer or FastAPI) turned the request down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.conftest import serving, settings_for

JSON = {"content-type": "application/json"}


@pytest.fixture
async def client(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    # Both ways in: tests/api/conftest.py runs this module with each request path.
    async with serving(settings_for(pair)) as (_, served):
        yield served


def problems(response: httpx.Response) -> tuple[str, list[dict[str, Any]]]:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:mirrorpool:problem:invalid-request"
    return body["detail"], body["errors"]


@pytest.mark.parametrize("path", ["/v1/query", "/v1/query/stream"])
async def test_an_unknown_field_is_located_the_same_on_every_query_route(
    client: httpx.AsyncClient, path: str
) -> None:
    detail, errors = problems(await client.post(path, json={"sql": "SELECT 1", "parms": [1]}))
    assert errors == [{"location": "$.parms", "message": "Extra inputs are not permitted"}]
    assert detail == "$.parms: Extra inputs are not permitted"


@pytest.mark.parametrize("path", ["/v1/query", "/v1/query/stream", "/v1/transaction"])
async def test_json_that_does_not_parse_says_so_without_stray_punctuation(
    client: httpx.AsyncClient, path: str
) -> None:
    detail, errors = problems(await client.post(path, content=b'{"sql":', headers=JSON))
    assert [e["location"] for e in errors] == ["$"]
    assert detail.startswith("$: Invalid JSON: ")
    assert errors[0]["message"].startswith("Invalid JSON: ")
    assert not detail.startswith(":")


async def test_nested_locations_are_json_paths(client: httpx.AsyncClient) -> None:
    body = {"statements": [{"sql": "SELECT 1"}, {"sql": 5}], "isolation": "sometimes"}
    detail, errors = problems(await client.post("/v1/transaction", json=body))
    located = {e["location"]: e["message"] for e in errors}
    assert located["$.statements[1].sql"] == "Input should be a valid string"
    assert "$.isolation" in located
    assert "$.statements[1].sql: Input should be a valid string" in detail


async def test_a_union_is_one_problem_at_its_own_location(client: httpx.AsyncClient) -> None:
    # params is an array or an object: pydantic tries both, the client sees one location.
    _, errors = problems(await client.post("/v1/query", json={"sql": "SELECT 1", "params": 5}))
    assert errors == [
        {"location": "$.params", "message": "Input should be a valid array or a JSON object"}
    ]


async def test_a_body_that_is_not_an_object(client: httpx.AsyncClient) -> None:
    for path in ("/v1/query", "/v1/queries/anything"):
        detail, errors = problems(await client.post(path, json=[1, 2]))
        assert errors == [{"location": "$", "message": "Input should be a JSON object"}], path
        assert detail == "$: Input should be a JSON object"


async def test_named_query_body_problems_use_the_same_paths(client: httpx.AsyncClient) -> None:
    detail, errors = problems(await client.post("/v1/queries/anything", json={"parms": {}}))
    assert errors == [{"location": "$.parms", "message": "Extra inputs are not permitted"}]
    assert detail == "$.parms: Extra inputs are not permitted"


def test_keys_that_are_not_identifiers_are_quoted() -> None:
    from app.api.errors import json_path  # noqa: PLC0415

    assert json_path([]) == "$"
    assert json_path(["params", 0, "a b", 'q"uote']) == '$.params[0]["a b"]["q\\"uote"]'
