"""Every type both ways through a real server: parameters in, JSON-ready values out."""

from __future__ import annotations

import base64
import math
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.devdb import LocalPair
from app.sql.session import startup_options
from app.sql.types import SESSION_SETTINGS, register_loaders, to_param

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def conn(pair: LocalPair) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    connection = await psycopg.AsyncConnection.connect(
        pair.primary.dsn(),
        autocommit=True,
        cursor_factory=psycopg.AsyncRawCursor,
        options=startup_options(SESSION_SETTINGS),
    )
    await register_loaders(connection)
    yield connection
    await connection.close()


async def one(conn: psycopg.AsyncConnection[Any], sql: str, *params: Any) -> Any:
    """The single value a query returns, as it would appear in an answer's JSON."""
    cur = await conn.execute(sql, [to_param(p) for p in params])
    row = await cur.fetchone()
    assert row is not None
    return orjson.loads(orjson.dumps(row[0]))


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 7::int2", 7),
        ("SELECT 2147483647::int4", 2147483647),
        ("SELECT 9007199254740993::int8", "9007199254740993"),
        (
            "SELECT 123456789012345678901234567890.123456789::numeric",
            "123456789012345678901234567890.123456789",
        ),
        ("SELECT 'NaN'::numeric", "NaN"),
        ("SELECT 1.5::float4", 1.5),
        ("SELECT 0.1::float8", 0.1),
        ("SELECT 'NaN'::float8", "NaN"),
        ("SELECT 'Infinity'::float8", "Infinity"),
        ("SELECT '-Infinity'::float4", "-Infinity"),
        ("SELECT true", True),
        ("SELECT 'x y'::varchar(5)", "x y"),
        ("SELECT 'ab'::char(3)", "ab "),
        ("SELECT '\\x00ff10'::bytea", base64.b64encode(b"\x00\xff\x10").decode()),
        ("SELECT '2024-02-29'::date", "2024-02-29"),
        ("SELECT 'infinity'::date", "infinity"),
        ("SELECT '-infinity'::timestamptz", "-infinity"),
        ("SELECT '0044-03-15 BC'::date", "-0043-03-15"),
        ("SELECT '12345-01-01'::date", "12345-01-01"),
        ("SELECT '13:45:30.25'::time", "13:45:30.25"),
        ("SELECT '13:45:30+02'::timetz", "13:45:30+02:00"),
        ("SELECT '13:45:30-09:30'::timetz", "13:45:30-09:30"),
        ("SELECT '2024-05-01 09:30:00.5'::timestamp", "2024-05-01T09:30:00.5"),
        ("SELECT '2024-05-01 09:30:00+02'::timestamptz", "2024-05-01T07:30:00+00:00"),
        ("SELECT '1 year 2 mons 3 days 04:05:06.5'::interval", "P1Y2M3DT4H5M6.5S"),
        ("SELECT '0'::interval", "PT0S"),
        ("SELECT '-1 day'::interval", "P-1D"),
        (
            "SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ),
        (
            'SELECT \'{"a": [1, 2.50, null], "b": {"c": "d"}}\'::jsonb',
            {"a": [1, 2.5, None], "b": {"c": "d"}},
        ),
        ("SELECT '[1, \"two\"]'::json", [1, "two"]),
        ("SELECT ARRAY[1, NULL, 3]::int8[]", ["1", None, "3"]),
        ("SELECT ARRAY[[1, 2], [3, 4]]::int4[]", [[1, 2], [3, 4]]),
        ("SELECT ARRAY['{\"x\": 1}'::jsonb, NULL]", [{"x": 1}, None]),
        ("SELECT ARRAY['\\x01'::bytea]", ["AQ=="]),
        ("SELECT ARRAY['a\"b,c\\d', NULL, '']::text[]", ['a"b,c\\d', None, ""]),
        ("SELECT ARRAY['2024-01-01 00:00+00'::timestamptz]", ["2024-01-01T00:00:00+00:00"]),
        ("SELECT ARRAY[1.5, 'NaN']::numeric[]", ["1.5", "NaN"]),
        ("SELECT '{}'::int4[]", []),
        ("SELECT '10.0.0.1/8'::inet", "10.0.0.1/8"),
        ("SELECT '[1,5)'::int4range", "[1,5)"),
        ("SELECT point(1, 2)", "(1,2)"),
        ("SELECT 12.5::money", "$12.50"),
        ("SELECT ROW(1, 'a')", "(1,a)"),
        ("SELECT NULL::int8", None),
    ],
)
async def test_results(conn: psycopg.AsyncConnection[Any], sql: str, expected: Any) -> None:
    assert await one(conn, sql) == expected


@pytest.mark.parametrize(
    ("sql", "param", "expected"),
    [
        (
            "SELECT $1::uuid",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ),
        ("SELECT now() > $1", "2000-01-01T00:00:00Z", True),
        ("SELECT 10.5 = $1", "10.50", True),
        ("SELECT $1::date + 1", "2024-02-28", "2024-02-29"),
        ("SELECT $1::timestamptz", "2024-05-01T09:30:00+05:30", "2024-05-01T04:00:00+00:00"),
        ("SELECT $1::interval", "P1D", "P1D"),
        ("SELECT $1::bytea", "\\x0102", "AQI="),
        ("SELECT $1::jsonb -> 'k'", {"k": [1, None, "x"]}, [1, None, "x"]),
        ("SELECT $1::jsonb", [1, "two", {"three": 3}], [1, "two", {"three": 3}]),
        ("SELECT 3 = ANY($1)", [1, 2, 3], True),
        ("SELECT $1::text[]", ["a", None, "c"], ["a", None, "c"]),
        ("SELECT pg_typeof($1)::text", [1, 2.5], "double precision[]"),
        ("SELECT 1 = ANY($1::int[])", [], False),
        ("SELECT $1::int8", 2**63 - 1, str(2**63 - 1)),
        ("SELECT $1::numeric", 10**30, str(10**30)),
        ("SELECT $1::int IS NULL", None, True),
        ("SELECT NOT $1", True, False),
    ],
)
async def test_parameters(
    conn: psycopg.AsyncConnection[Any], sql: str, param: Any, expected: Any
) -> None:
    assert await one(conn, sql, param) == expected


_FAST = settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FAST
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
async def test_any_int64_comes_back_exact(conn: psycopg.AsyncConnection[Any], n: int) -> None:
    assert await one(conn, "SELECT $1::int8", n) == str(n)


@_FAST
@given(st.floats(allow_nan=False, allow_infinity=False))
async def test_any_float_round_trips(conn: psycopg.AsyncConnection[Any], x: float) -> None:
    got = await one(conn, "SELECT $1::float8", x)
    assert got == x or (x == 0 and got == 0 and math.copysign(1, got) == math.copysign(1, x))


@_FAST
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00")))
async def test_any_text_round_trips(conn: psycopg.AsyncConnection[Any], s: str) -> None:
    assert await one(conn, "SELECT $1::text", s) == s


@_FAST
@given(st.binary(max_size=200))
async def test_any_bytes_round_trip_as_base64(conn: psycopg.AsyncConnection[Any], b: bytes) -> None:
    hexed = "\\x" + b.hex()
    assert base64.b64decode(await one(conn, "SELECT $1::bytea", hexed)) == b


@_FAST
@given(st.decimals(allow_nan=False, allow_infinity=False, places=None))
async def test_any_decimal_round_trips_exactly(
    conn: psycopg.AsyncConnection[Any], d: Decimal
) -> None:
    assert Decimal(await one(conn, "SELECT $1::numeric", str(d))) == d
