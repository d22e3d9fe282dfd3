"""POST /sql on the wire (Neon's protocol), and what it must not leave behind."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.api.auth import hash_key
from app.devdb import LocalPair
from tests.conftest import as_owner, serving_ready, settings_for

KEY = f"neon-key-{uuid.uuid4().hex}"
URL = f"postgresql://someone:{KEY}@mirrorpool.internal/anydb"
HEADERS = {
    "Neon-Connection-String": URL,
    "Neon-Raw-Text-Output": "true",
    "Neon-Array-Mode": "true",
    "content-type": "text/plain;charset=UTF-8",
}


@pytest.fixture
async def client(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    # One connection: what one request leaves in its session, the next one would see.
    keys = [{"id": "neon", "sha256": hash_key(KEY), "scopes": ["write"]}]
    settings = settings_for(
        pair, auth="keys", api_keys=keys, pool_min_size=1, pool_max_size=1,
        max_body_bytes=4096,
    )  # fmt: skip
    async with serving_ready(settings) as (_, c):
        yield c


async def sql(
    client: httpx.AsyncClient, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post("/sql", content=json.dumps(body), headers=headers or HEADERS)


async def test_an_answer_has_neons_shape(client: httpx.AsyncClient) -> None:
    r = await sql(
        client, {"query": "SELECT $1::int + 1 AS n, $2::text AS t", "params": ["41", None]}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "command": "SELECT",
        "rowCount": 1,
        "rowAsArray": True,
        "fields": [
            {"name": "n", "dataTypeID": 23, "tableID": 0, "columnID": 0, "dataTypeSize": 4,
             "dataTypeModifier": -1, "format": "text"},
            {"name": "t", "dataTypeID": 25, "tableID": 0, "columnID": 0, "dataTypeSize": -1,
             "dataTypeModifier": -1, "format": "text"},
        ],
        "rows": [["42", None]],
    }  # fmt: skip


async def test_rows_as_objects_without_array_mode(client: httpx.AsyncClient) -> None:
    headers = {k: v for k, v in HEADERS.items() if k != "Neon-Array-Mode"}
    r = await sql(client, {"query": "SELECT 1 AS a, 'x' AS b"}, headers)
    assert r.json()["rowAsArray"] is False
    assert r.json()["rows"] == [{"a": "1", "b": "x"}]


async def test_values_are_postgresql_text_and_styles_do_not_leak(
    client: httpx.AsyncClient,
) -> None:
    query = (
        "SELECT '1 year 2 mons 3 days 04:05:06.5'::interval AS i, '\\x00ff'::bytea AS b, "
        "ARRAY[1, NULL]::int[] AS a, '2024-05-01 09:30+02'::timestamptz AS ts, "
        "0.1::float8 AS f, current_setting('IntervalStyle') AS style, "
        "current_setting('DateStyle') AS dates"
    )
    r = await sql(client, {"query": query})
    assert r.json()["rows"] == [[
        "1 year 2 mons 3 days 04:05:06.5", "\\x00ff", "{1,NULL}", "2024-05-01 07:30:00+00",
        "0.1", "postgres", "ISO, YMD",
    ]]  # fmt: skip
    # The same (only) pool connection, right after: mirrorpool's own styles are back.
    r = await client.post(
        "/v1/query",
        json={"sql": "SELECT '1 day'::interval AS i, current_setting('IntervalStyle') AS s"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert r.json()["rows"] == [["P1D", "iso_8601"]]
    # Turn about, often enough for either side's statement to be prepared by name.
    text = "SELECT '1 day'::interval AS i, '1 day'::interval::text AS t"
    for _ in range(3):
        r = await sql(client, {"query": text})
        assert r.json()["rows"] == [["1 day", "1 day"]]
        r = await client.post(
            "/v1/query", json={"sql": text}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert r.json()["rows"] == [["P1D", "P1D"]]


async def test_a_batch_is_one_transaction_in_the_modes_asked(client: httpx.AsyncClient) -> None:
    headers = {
        **HEADERS,
        "Neon-Batch-Isolation-Level": "Serializable",
        "Neon-Batch-Read-Only": "true",
        "Neon-Batch-Deferrable": "true",
    }
    queries = [
        {"query": "SHOW transaction_isolation"},
        {"query": "SHOW transaction_read_only"},
        {"query": "SHOW transaction_deferrable"},
        {"query": "SELECT $1::int AS n", "params": ["7"]},
    ]
    r = await sql(client, {"queries": queries}, headers)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["rows"] for x in results] == [[["serializable"]], [["on"]], [["on"]], [["7"]]]
    assert results[0]["command"] == "SHOW" and results[0]["rowCount"] is None


async def test_a_failing_batch_rolls_back_and_answers_400(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    table = f"neon_{uuid.uuid4().hex[:12]}"
    as_owner(pair, f"CREATE TABLE {table} (id int PRIMARY KEY)")
    queries = [
        {"query": f"INSERT INTO {table} VALUES ($1)", "params": ["1"]},
        {"query": "SELECT 1 / $1::int", "params": ["0"]},
    ]
    r = await sql(client, {"queries": queries})
    assert r.status_code == 400
    error = r.json()
    assert (error["code"], error["message"], error["severity"]) == (
        "22012", "division by zero", "ERROR",
    )  # fmt: skip
    assert error["statementIndex"] == 1
    r = await sql(client, {"query": f"SELECT count(*) FROM {table}"})
    assert r.json()["rows"] == [["0"]]


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        ("not json", {}, 400, "not JSON"),
        ('{"params": []}', {}, 400, "query"),
        ('{"queries": []}', {}, 400, "queries"),
        ('{"query": "SELECT $1", "params": [[1, 2]]}', {}, 400, "array text"),
        ('{"query": "SELECT $1, $2"}', {}, 400, "missing values"),
        ('{"queries": [{"query": "SELECT 1"}]}', {"Neon-Batch-Isolation-Level": "Chaos"}, 400,
         "Neon-Batch-Isolation-Level"),
        ('{"queries": [{"query": "SELECT 1"}]}', {"Neon-Batch-Read-Only": "yes"}, 400,
         "true or false"),
        ('{"query": "SELECT 1"}', {"Neon-Array-Mode": "yes"}, 400, "true or false"),
        ('{"query": "SELECT 1"}', {"Neon-Connection-String": "postgresql://a@h/db"}, 401,
         "password of the connection string"),
        ('{"query": "SELECT 1"}', {"Neon-Connection-String": "postgresql://a:nope@h/db"}, 401,
         "not valid"),
        ('{"query": "' + "x" * 5000 + '"}', {}, 413, "larger than"),
    ],
)  # fmt: skip
async def test_bad_requests_say_what_is_wrong(
    client: httpx.AsyncClient, body: str, headers: dict[str, str], status: int, says: str
) -> None:
    r = await client.post("/sql", content=body, headers={**HEADERS, **headers})
    assert r.status_code == status, r.text
    # The driver shows `message` from a 400, and the whole body of any other status (a 413
    # is answered before any route, as problem+json).
    assert says in (r.json()["message"] if status == 400 else r.text)
    assert "nope" not in r.text


async def test_the_bearer_key_comes_first(client: httpx.AsyncClient) -> None:
    wrong_url = {**HEADERS, "Neon-Connection-String": "postgresql://a:wrong@h/db"}
    r = await sql(client, {"query": "SELECT 1"}, {**wrong_url, "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    r = await sql(client, {"query": "SELECT 1"}, {**HEADERS, "Authorization": "Bearer wrong"})
    assert r.status_code == 401


async def test_numbers_and_booleans_bind_as_their_text(client: httpx.AsyncClient) -> None:
    body = {"query": "SELECT $1::int8, $2::bool, $3::numeric", "params": [7, True, 1.5]}
    assert (await sql(client, body)).json()["rows"] == [["7", "t", "1.5"]]


async def test_requests_are_counted_by_route_without_the_header(
    client: httpx.AsyncClient,
) -> None:
    await sql(client, {"query": "SELECT 1"})
    metrics = (await client.get("/metrics")).text
    assert 'mirrorpool_http_requests_total{method="POST",route="/sql",status="200"}' in metrics
    assert KEY not in metrics


# One value of each kind of built-in type, arrays included, as a SQL expression.
BUILTIN_VALUES = [
    "32767::int2", "'-2147483648'::int4", "9223372036854775807::int8", "'-12.3400'::numeric",
    "'NaN'::numeric", "1.1::float4", "'-Infinity'::float8", "0.1::float8", "12.5::money",
    "true", "'it''s'::text", "'v'::varchar(3)", "'c'::char(3)", "'n'::name", "'\\x00ff'::bytea",
    "'2024-02-29'::date", "'infinity'::date", "'0044-03-15 BC'::date", "'09:30:00.5'::time",
    "'09:30+05:30'::timetz", "'2024-05-01 09:30:00.25'::timestamp",
    "'2024-05-01 09:30+02'::timestamptz", "'-1 year -2 mons +3 days -04:05:06'::interval",
    "'P1Y2M3DT4H5M6.5S'::interval", "gen_random_uuid()::text::uuid IS NOT NULL",
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid", "'{\"b\": [1, 2.50]}'::json",
    "'{\"b\": [1, 2.50]}'::jsonb", "'10.1.2.3/8'::inet", "'10.0.0.0/8'::cidr",
    "'08:00:2b:01:02:03'::macaddr", "'(1,2)'::point", "'((0,0),(1,1))'::box",
    "'[1,5)'::int4range", "'{[1,2], [4,5]}'::int4multirange", "'a fat cat'::tsvector",
    "B'101'", "'<a>x</a>'::xml", "'pg_class'::regclass::oid", "ARRAY[1, NULL, 3]",
    "ARRAY['a b', 'c\"d', NULL, 'NULL', '']", "ARRAY[[1.5, 2], [3, 4]]::numeric[]",
    "ARRAY['1 day'::interval]", "ARRAY['2024-05-01 09:30+02'::timestamptz]",
    "ARRAY['\\x01'::bytea]", "ARRAY[true, false]", "ARRAY['{\"a\": 1}'::jsonb]",
    "'{}'::int[]", "ROW(1, 'x', NULL, '1 hour'::interval)", "NULL",
]  # fmt: skip


async def test_every_builtin_type_is_answered_as_postgresql_prints_it(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    query = "SELECT " + ", ".join(BUILTIN_VALUES)
    r = await sql(client, {"query": query})
    assert r.status_code == 200, r.text
    (answered,) = r.json()["rows"]
    # What a session of PostgreSQL's own defaults (UTC, as mirrorpool's sessions run) prints:
    # libpq's text values, as they came from the server.
    with pair.primary.connect() as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("RESET IntervalStyle; RESET DateStyle")
        result = conn.execute(query).pgresult
        assert result is not None
        values = [result.get_value(0, i) for i in range(result.nfields)]
    expected = [None if v is None else bytes(v).decode() for v in values]
    assert dict(zip(BUILTIN_VALUES, answered, strict=True)) == dict(
        zip(BUILTIN_VALUES, expected, strict=True)
    )
    types = [f["dataTypeID"] for f in r.json()["fields"]]
    assert types[:3] == [21, 23, 20] and types[BUILTIN_VALUES.index("ARRAY[1, NULL, 3]")] == 1007


async def test_the_statement_timeout_applies(pair: LocalPair) -> None:
    keys = [{"id": "neon", "sha256": hash_key(KEY), "scopes": ["write"]}]
    settings = settings_for(pair, auth="keys", api_keys=keys, statement_timeout_ms=300)
    async with serving_ready(settings) as (_, client):
        started = time.monotonic()
        r = await sql(client, {"query": "SELECT pg_sleep(5)"})
        elapsed = time.monotonic() - started
        batch = {"queries": [{"query": "SELECT 1"}, {"query": "SELECT pg_sleep(5)"}]}
        r_batch = await sql(client, batch)
    assert (r.status_code, r.json()["code"]) == (400, "57014")  # the server cancelled it
    assert elapsed < 3
    assert (r_batch.status_code, r_batch.json()["code"]) == (400, "57014")
