"""POST /v1/query against real PostgreSQL: results, parameters, errors and their statuses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.devdb import LocalPair
from tests.conftest import as_owner, serving_ready, settings_for


@pytest.fixture
async def api(pair: LocalPair) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with serving_ready(settings_for(pair, pool_max_size=4)) as served:
        yield served


@pytest.fixture
async def client(api: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return api[1]


@pytest.fixture
def table(pair: LocalPair) -> str:
    """A fresh table of users with a unique email, for one test."""
    name = f"users_{uuid.uuid4().hex[:12]}"
    as_owner(pair, f"CREATE TABLE {name} (id serial PRIMARY KEY, email text UNIQUE, n int8)")
    return name


async def q(client: httpx.AsyncClient, sql: str, params: Any = None, **extra: Any) -> Any:
    return await client.post("/v1/query", json={"sql": sql, "params": params, **extra})


async def test_select_with_positional_parameters(client: httpx.AsyncClient) -> None:
    response = await q(
        client, "SELECT $1::int4 AS a, $2::text AS b, $3::int8 AS c", [7, "x", 2**62]
    )
    assert response.status_code == 200
    assert response.headers["x-mirrorpool-node"] == "primary"
    body = response.json()
    assert body["columns"] == [
        {"name": "a", "type": "int4", "type_oid": 23},
        {"name": "b", "type": "text", "type_oid": 25},
        {"name": "c", "type": "int8", "type_oid": 20},
    ]
    assert body["rows"] == [[7, "x", str(2**62)]]
    assert body["row_count"] == 1
    assert body["command"] == "SELECT 1"
    assert body["rows_affected"] is None
    assert body["truncated"] is False
    assert body["node"] == "primary"
    assert body["duration_ms"] >= 0


async def test_named_parameters_and_object_rows(client: httpx.AsyncClient) -> None:
    response = await q(
        client,
        "SELECT :name::text AS who, :n::int * 2 AS twice, ':not_a_param' AS literal, :n AS again",
        {"name": "ada", "n": 21},
        row_format="object",
    )
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [
        {"who": "ada", "twice": 42, "literal": ":not_a_param", "again": 21}
    ]


async def test_insert_reports_rows_affected_and_tag(client: httpx.AsyncClient, table: str) -> None:
    inserted = await q(client, f"INSERT INTO {table} (email) VALUES ($1), ($2)", ["a@x", "b@x"])
    assert inserted.status_code == 200
    assert inserted.json()["command"] == "INSERT 0 2"
    assert inserted.json()["rows_affected"] == 2
    returning = await q(client, f"INSERT INTO {table} (email) VALUES ($1) RETURNING id", ["c@x"])
    assert returning.json()["rows"] == [[3]]
    assert returning.json()["rows_affected"] == 1
    updated = await q(
        client, f"UPDATE {table} SET n = 1 WHERE email LIKE 'a%' OR email = $1", ["b@x"]
    )
    assert updated.json()["command"] == "UPDATE 2"
    assert updated.json()["rows_affected"] == 2


async def test_like_with_percent_needs_no_escaping(client: httpx.AsyncClient, table: str) -> None:
    await q(client, f"INSERT INTO {table} (email) VALUES ('ab%c'), ('abd')")
    response = await q(
        client,
        f"SELECT email FROM {table} WHERE email LIKE 'ab%' AND email LIKE $1 ORDER BY 1",
        ["%c"],
    )
    assert response.json()["rows"] == [["ab%c"]]


async def test_string_parameters_are_cast_by_the_server(client: httpx.AsyncClient) -> None:
    uid = str(uuid.uuid4())
    response = await q(
        client,
        "SELECT $1::uuid AS u, now() > $2 AS later, 10.5 = $3 AS same, $4::date + 1 AS next",
        [uid, "2000-01-01T00:00:00Z", "10.50", "2024-02-28"],
    )
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [[uid, True, True, "2024-02-29"]]


async def test_jsonb_and_arrays_as_parameters(client: httpx.AsyncClient) -> None:
    response = await q(
        client,
        "SELECT $1::jsonb -> 'a' AS a, 3 = ANY($2) AS has3, $3::jsonb AS mixed",
        [{"a": {"b": [1, None]}}, [1, 2, 3], [1, "two", {"three": 3}]],
    )
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [[{"b": [1, None]}, True, [1, "two", {"three": 3}]]]


@pytest.mark.parametrize(
    ("sql", "params", "status", "sqlstate"),
    [
        ("SELEC 1", None, 400, "42601"),
        ("SELECT 1/0", None, 400, "22012"),
        ("SELECT * FROM no_such_table_here", None, 400, "42P01"),
        ("SELECT $1::int", ["not a number"], 400, "22P02"),
    ],
)
async def test_database_errors_keep_their_sqlstate(
    client: httpx.AsyncClient, sql: str, params: Any, status: int, sqlstate: str
) -> None:
    response = await q(client, sql, params)
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert response.status_code == status
    assert problem["sqlstate"] == sqlstate
    assert problem["status"] == status
    assert problem["type"] == "urn:mirrorpool:problem:database-error"
    assert problem["request_id"] == response.headers["x-request-id"]
    assert problem["database"]["message"] == problem["detail"]


async def test_syntax_error_reports_its_position(client: httpx.AsyncClient) -> None:
    problem = (await q(client, "SELECT 1 FROM WHERE x")).json()
    assert problem["sqlstate"] == "42601"
    assert problem["database"]["position"] == 15


async def test_unique_violation_is_409_with_constraint(
    client: httpx.AsyncClient, table: str
) -> None:
    await q(client, f"INSERT INTO {table} (email) VALUES ('dup@x')")
    response = await q(client, f"INSERT INTO {table} (email) VALUES ($1)", ["dup@x"])
    assert response.status_code == 409
    problem = response.json()
    assert problem["sqlstate"] == "23505"
    assert problem["database"]["constraint"] == f"{table}_email_key"
    assert problem["database"]["table"] == table
    assert "already exists" in problem["database"]["detail"]


@pytest.mark.parametrize(
    ("sql", "params", "fragment"),
    [
        ("SELECT $1, $2", [1], "$2"),
        ("SELECT $1", [1, 2], "$2"),
        ("SELECT :a, :b", {"a": 1}, ":b"),
        ("SELECT :a", {"a": 1, "zzz": 2}, ":zzz"),
        ("SELECT :a", [1], "object"),
        ("SELECT $1", {"a": 1}, "array"),
    ],
)
async def test_parameter_mismatch_is_400_naming_them(
    client: httpx.AsyncClient, sql: str, params: Any, fragment: str
) -> None:
    response = await q(client, sql, params)
    assert response.status_code == 400
    problem = response.json()
    assert problem["type"] == "urn:mirrorpool:problem:invalid-parameters"
    assert fragment in problem["detail"]


async def test_more_than_one_statement_is_400(client: httpx.AsyncClient, table: str) -> None:
    response = await q(client, f"SELECT 1; DROP TABLE {table}")
    assert response.status_code == 400
    assert response.json()["type"] == "urn:mirrorpool:problem:invalid-sql"
    still_there = await q(client, f"SELECT count(*) FROM {table}")
    assert still_there.status_code == 200
    trailing = await q(client, "SELECT 1; -- done\n;")
    assert trailing.status_code == 200


async def test_read_only_request_cannot_write(client: httpx.AsyncClient, table: str) -> None:
    response = await q(client, f"INSERT INTO {table} (email) VALUES ('ro@x')", read_only=True)
    assert response.status_code == 403
    assert response.json()["sqlstate"] == "25006"
    hidden = await q(
        client,
        f"WITH x AS (DELETE FROM {table} RETURNING 1) SELECT count(*) FROM x",
        read_only=True,
    )
    assert hidden.status_code == 403
    assert (
        await q(client, "SELECT nextval('pg_catalog.pg_class_oid_seq')", read_only=True)
    ).status_code in {400, 403}
    count = await q(client, f"SELECT count(*) FROM {table}")
    assert count.json()["rows"] == [["0"]]


async def test_session_changes_do_not_leak_to_the_next_request(pair: LocalPair) -> None:
    async with serving_ready(settings_for(pair, pool_min_size=1, pool_max_size=1)) as (_, c):
        assert (await q(c, "SET search_path = nowhere")).status_code == 200
        assert (await q(c, "SELECT set_config('statement_timeout', '1', false)")).status_code == 200
        assert (await q(c, "SET TimeZone = 'Asia/Tokyo'")).status_code == 200
        shown = await q(
            c,
            "SELECT current_setting('search_path'), current_setting('statement_timeout'),"
            " current_setting('TimeZone')",
        )
        assert shown.json()["rows"] == [['"$user", public', "30s", "UTC"]]


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/health/live", headers={"X-Request-ID": "bad id with spaces"})
    assert made.headers["x-request-id"] != "bad id with spaces"
    assert len(made.headers["x-request-id"]) == 16
