"""Every type both ways through a real server: JSON parameters in, JSON-ready values out."""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import pq

from app.devdb import LocalPair
from app.errors import InvalidParameters
from app.sql.columns import TypeNames
from app.sql.session import startup_options
from app.sql.types import SESSION_SETTINGS, configure_connection, register_loaders, to_param

pytestmark = pytest.mark.asyncio(loop_scope="module")

Conn = psycopg.AsyncConnection[Any]
UUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


async def connect(pair: LocalPair, **kwargs: Any) -> Conn:
    """A raw-cursor connection as the pool makes them, not yet configured."""
    kwargs.setdefault("autocommit", True)
    return await psycopg.AsyncConnection.connect(
        pair.primary.dsn(), cursor_factory=psycopg.AsyncRawCursor, **kwargs
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def conn(pair: LocalPair) -> AsyncIterator[Conn]:
    connection = await connect(pair)
    await configure_connection(connection)
    yield connection
    await connection.close()


def assert_json_ready(value: Any) -> None:
    """Only what orjson writes as JSON by itself: no datetime, Decimal, UUID, Range, ..."""
    if isinstance(value, list):
        for item in value:
            assert_json_ready(item)
    else:
        assert type(value) in {str, int, float, bool, type(None), orjson.Fragment}, repr(value)


async def fetch(conn: Conn, sql: str, *params: Any) -> Any:
    """The single value a query returns, as the loaders give it."""
    cur = await conn.execute(sql, [to_param(p) for p in params])
    row = await cur.fetchone()
    assert row is not None
    assert_json_ready(row[0])
    return row[0]


async def answer(conn: Conn, sql: str, *params: Any) -> Any:
    """The single value a query returns, as it reads in the answer's JSON."""
    return orjson.loads(orjson.dumps(await fetch(conn, sql, *params)))


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 7::int2", 7),
        ("SELECT (-2147483648)::int4", -2147483648),
        ("SELECT 1259::oid", 1259),
        ("SELECT 9007199254740993::int8", "9007199254740993"),
        ("SELECT (-9223372036854775807 - 1)::int8", "-9223372036854775808"),
        (
            "SELECT 1234567890123456789012345678901234567890.0123456789::numeric",
            "1234567890123456789012345678901234567890.0123456789",
        ),
        ("SELECT 1.50::numeric", "1.50"),
        ("SELECT 'NaN'::numeric", "NaN"),
        ("SELECT 'Infinity'::numeric", "Infinity"),
        ("SELECT '-Infinity'::numeric", "-Infinity"),
        ("SELECT 1.5::float4", 1.5),
        ("SELECT 0.1::float8", 0.1),
        ("SELECT 1.7976931348623157e308::float8", 1.7976931348623157e308),
        ("SELECT 'NaN'::float8", "NaN"),
        ("SELECT 'Infinity'::float8", "Infinity"),
        ("SELECT '-Infinity'::float4", "-Infinity"),
        ("SELECT true", True),
        ("SELECT false", False),
        ("SELECT 'x y'::varchar(5)", "x y"),
        ("SELECT 'ab'::char(3)", "ab "),
        ("SELECT 'pg_class'::name", "pg_class"),
        ("SELECT 'x'::\"char\"", "x"),
        ("SELECT 'żółw 🐢'::text", "żółw 🐢"),
        ("SELECT '\\x00ff10'::bytea", base64.b64encode(b"\x00\xff\x10").decode()),
        ("SELECT ''::bytea", ""),
        ("SELECT '2024-02-29'::date", "2024-02-29"),
        ("SELECT 'infinity'::date", "infinity"),
        ("SELECT '-infinity'::date", "-infinity"),
        ("SELECT '0044-03-15 BC'::date", "-0043-03-15"),
        ("SELECT '0001-12-31 BC'::date", "0000-12-31"),
        ("SELECT '4713-01-01 BC'::date", "-4712-01-01"),
        ("SELECT '12345-01-01'::date", "12345-01-01"),
        ("SELECT '13:45:30.25'::time", "13:45:30.25"),
        ("SELECT '03:04:05.123456'::time", "03:04:05.123456"),
        ("SELECT '13:45:30+02'::timetz", "13:45:30+02:00"),
        ("SELECT '13:45:30.5-09:30'::timetz", "13:45:30.5-09:30"),
        ("SELECT '2024-05-01 09:30:00.5'::timestamp", "2024-05-01T09:30:00.5"),
        ("SELECT '294276-12-31 23:59:59'::timestamp", "294276-12-31T23:59:59"),
        ("SELECT '0044-03-15 12:00 BC'::timestamp", "-0043-03-15T12:00:00"),
        ("SELECT 'infinity'::timestamp", "infinity"),
        ("SELECT '2024-05-01 09:30:00+02'::timestamptz", "2024-05-01T07:30:00+00:00"),
        ("SELECT '2024-05-01 09:30:00.25-05:30'::timestamptz", "2024-05-01T15:00:00.25+00:00"),
        ("SELECT '0044-03-15 12:00+00 BC'::timestamptz", "-0043-03-15T12:00:00+00:00"),
        ("SELECT '-infinity'::timestamptz", "-infinity"),
        ("SELECT '1 year 2 mons 3 days 04:05:06.5'::interval", "P1Y2M3DT4H5M6.5S"),
        ("SELECT '1 mon -3 days'::interval", "P1M-3D"),
        ("SELECT '-0.000001 sec'::interval", "PT-0.000001S"),
        ("SELECT '0'::interval", "PT0S"),
        (
            'SELECT \'{"a": [1, 2.50, null], "b": {"c": "d"}}\'::jsonb',
            {"a": [1, 2.5, None], "b": {"c": "d"}},
        ),
        ("SELECT '[1, \"two\", null]'::json", [1, "two", None]),
        ("SELECT NULL::int8", None),
        ("SELECT NULL::jsonb", None),
    ],
)
async def test_scalar_results(conn: Conn, sql: str, expected: Any) -> None:
    assert await answer(conn, sql) == expected


async def test_uuid_comes_back_as_its_string(conn: Conn) -> None:
    assert await fetch(conn, f"SELECT '{UUID.upper()}'::uuid") == UUID


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT ARRAY[9223372036854775807, NULL]::int8[]", ["9223372036854775807", None]),
        ("SELECT ARRAY[1.50, 'NaN', 'Infinity']::numeric[]", ["1.50", "NaN", "Infinity"]),
        ("SELECT ARRAY[1.5, 'NaN', '-Infinity']::float8[]", [1.5, "NaN", "-Infinity"]),
        ("SELECT ARRAY['{\"x\": [1]}'::jsonb, NULL, '\"s\"']", [{"x": [1]}, None, "s"]),
        (
            "SELECT ARRAY['2024-05-01 09:30+02'::timestamptz, '-infinity']",
            ["2024-05-01T07:30:00+00:00", "-infinity"],
        ),
        ("SELECT ARRAY['\\x00ff'::bytea, '', NULL]", ["AP8=", "", None]),
        (
            "SELECT ARRAY['a\"b', 'c,d', 'e\\f', 'NULL', '{}', ' x ', NULL, '']::text[]",
            ['a"b', "c,d", "e\\f", "NULL", "{}", " x ", None, ""],
        ),
        ("SELECT ARRAY[[1, NULL], [3, 4]]::int4[]", [[1, None], [3, 4]]),
        ("SELECT '{{{1},{2}},{{3},{4}}}'::int2[]", [[[1], [2]], [[3], [4]]]),
        ("SELECT '[0:1]={7,8}'::int4[]", [7, 8]),
        ("SELECT '{}'::int4[]", []),
        ("SELECT ARRAY[true, NULL]", [True, None]),
        ("SELECT ARRAY['0044-03-15 BC'::date, 'infinity']", ["-0043-03-15", "infinity"]),
        ("SELECT ARRAY['13:00+02'::timetz]", ["13:00:00+02:00"]),
        ("SELECT ARRAY['2024-01-02 03:04'::timestamp]", ["2024-01-02T03:04:00"]),
        ("SELECT ARRAY['1 day'::interval, '-1 mon']", ["P1D", "P-1M"]),
        (f"SELECT ARRAY['{UUID}'::uuid]", [UUID]),
        ("SELECT ARRAY['ab'::char(3), 'x y'::varchar]", ["ab ", "x y"]),
        ("SELECT ARRAY['10.0.0.1'::inet, '10.1.0.0/16'::cidr]", ["10.0.0.1", "10.1.0.0/16"]),
        ("SELECT ARRAY['[1,5)'::int4range, 'empty']", ["[1,5)", "empty"]),
        ("SELECT ARRAY[box '((0,0),(1,1))', box '((2,2),(3,3))']", ["(1,1),(0,0)", "(3,3),(2,2)"]),
        ("SELECT ARRAY[ROW(1, 'a b')]", ['(1,"a b")']),
    ],
)
async def test_array_results(conn: Conn, sql: str, expected: Any) -> None:
    assert await answer(conn, sql) == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # psycopg's defaults would give ipaddress objects, Range and Multirange objects, tuples.
        ("SELECT '10.0.0.1/8'::inet", "10.0.0.1/8"),
        ("SELECT '192.168.0.0/16'::cidr", "192.168.0.0/16"),
        ("SELECT '[1,5)'::int4range", "[1,5)"),
        ("SELECT '(1,10]'::int8range", "[2,11)"),
        ("SELECT '[1.5,2.5]'::numrange", "[1.5,2.5]"),
        ("SELECT '[2024-01-01,2024-02-01)'::daterange", "[2024-01-01,2024-02-01)"),
        ("SELECT '[2024-01-01 10:00,)'::tsrange", '["2024-01-01 10:00:00",)'),
        (
            "SELECT '[2024-01-01 00:00+02,infinity)'::tstzrange",
            '["2023-12-31 22:00:00+00",infinity)',
        ),
        ("SELECT '{[1,3), [5,7)}'::int4multirange", "{[1,3),[5,7)}"),
        ("SELECT '{[2024-01-01,2024-01-05)}'::datemultirange", "{[2024-01-01,2024-01-05)}"),
        ("SELECT ROW(1, 'a')", "(1,a)"),
        ("SELECT point(1, 2)", "(1,2)"),
        ("SELECT circle '<(0,0),2>'", "<(0,0),2>"),
        ("SELECT 12.5::money", "$12.50"),
        ("SELECT '08:00:2b:01:02:03'::macaddr", "08:00:2b:01:02:03"),
        ("SELECT '<a>1</a>'::xml", "<a>1</a>"),
        ("SELECT 'a fat cat'::tsvector", "'a' 'cat' 'fat'"),
        ("SELECT B'101'::varbit", "101"),
        ("SELECT '0/16B3748'::pg_lsn", "0/16B3748"),
        ("SELECT 'pg_class'::regclass", "pg_class"),
    ],
)
async def test_other_types_come_back_as_their_text(conn: Conn, sql: str, expected: Any) -> None:
    assert await fetch(conn, sql) == expected


async def test_user_defined_types_come_back_as_their_text(conn: Conn) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    async with conn.transaction(force_rollback=True):
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"CREATE TYPE {schema}.mood AS ENUM ('happy', 'sad')")
        await conn.execute(f"CREATE TYPE {schema}.pair AS (n int, s text)")
        await conn.execute(f"CREATE DOMAIN {schema}.big AS int8")
        assert await fetch(conn, f"SELECT 'sad'::{schema}.mood") == "sad"
        assert await fetch(conn, f"SELECT ROW(1, 'x y')::{schema}.pair") == '(1,"x y")'
        # A domain is reported with its base type's OID, so it loads as that type.
        assert await fetch(conn, f"SELECT 9007199254740993::{schema}.big") == "9007199254740993"
        # psycopg knows no array OID of a user type without a catalog query: text form.
        assert await fetch(conn, f"SELECT ARRAY['happy', 'sad']::{schema}.mood[]") == (
            "{happy,sad}"
        )


async def test_json_is_embedded_verbatim_in_the_serialised_row(conn: Conn) -> None:
    cur = await conn.execute(
        """SELECT 1, '{"b": 1, "a": [1.50, 12345678901234567890123]}'::jsonb,
                  '{"z":1,  "z" : 2}'::json, ARRAY['{"k": null}'::jsonb], NULL::jsonb"""
    )
    rows = await cur.fetchall()
    # jsonb's own text (key order, spacing, exact numbers) and json's input text as stored.
    assert orjson.dumps(rows) == (
        b'[[1,{"a": [1.50, 12345678901234567890123], "b": 1},{"z":1,  "z" : 2},[{"k": null}],null]]'
    )
    # A big number in a jsonb parameter stays exact: it never goes through a float.
    assert orjson.dumps(await fetch(conn, "SELECT $1::jsonb -> 'n'", {"n": 2**70})) == (
        str(2**70).encode()
    )


async def test_a_row_of_every_kind_serialises_with_one_dumps(conn: Conn) -> None:
    cur = await conn.execute(
        "SELECT 1::int8, 2.5::numeric, 'NaN'::float8, '\\x01'::bytea, '2024-01-02'::date,"
        " '2024-01-02 03:04:05+00'::timestamptz, '1 day'::interval, $1::uuid,"
        " '1.2.3.4'::inet, '[1,2)'::int4range, '{[1,2)}'::int4multirange, ROW(1),"
        " '{\"a\": 1}'::jsonb",
        [UUID],
    )
    row = await cur.fetchone()
    assert orjson.loads(orjson.dumps(row)) == [
        "1",
        "2.5",
        "NaN",
        "AQ==",
        "2024-01-02",
        "2024-01-02T03:04:05+00:00",
        "P1D",
        UUID,
        "1.2.3.4",
        "[1,2)",
        "{[1,2)}",
        "(1)",
        {"a": 1},
    ]


@pytest.mark.parametrize(
    ("sql", "param", "expected"),
    [
        ("SELECT $1::uuid", UUID, UUID),
        ("SELECT now() > $1", "2000-01-01T00:00:00Z", True),
        (
            "SELECT count(*)::int FROM (VALUES ('2024-01-01 00:00+00'::timestamptz),"
            " ('2024-06-01 00:00+00')) t(created_at) WHERE created_at > $1",
            "2024-03-01T00:00:00+01:00",
            1,
        ),
        ("SELECT n FROM (VALUES (10.50::numeric)) t(n) WHERE n = $1", "10.5", "10.50"),
        ("SELECT $1::numeric", "NaN", "NaN"),
        ("SELECT $1::date + 1", "2024-02-28", "2024-02-29"),
        ("SELECT $1::date", "0044-03-15 BC", "-0043-03-15"),
        ("SELECT $1::timestamptz", "2024-05-01T09:30:00+05:30", "2024-05-01T04:00:00+00:00"),
        ("SELECT $1::timetz", "09:30:00-04", "09:30:00-04:00"),
        ("SELECT $1::interval", "P1Y2M3DT4H5M6.5S", "P1Y2M3DT4H5M6.5S"),
        ("SELECT $1::bytea", "\\x0102", "AQI="),
        ("SELECT $1::inet", "::1", "::1"),
        ("SELECT $1::jsonb -> 'k'", {"k": [1, None, "x"]}, [1, None, "x"]),
        ("SELECT $1::jsonb", [1, "two", {"three": 3}], [1, "two", {"three": 3}]),
        ("SELECT pg_typeof($1)::text", {"a": 1}, "jsonb"),
        ("SELECT 3 = ANY($1)", [1, 2, 3], True),
        ("SELECT 5::int8 = ANY($1)", [1, 5], True),
        ("SELECT $1::text[]", ["a", None, "c"], ["a", None, "c"]),
        (
            "SELECT $1::text[]",
            ["NULL", 'a"b', "c,d", "e\\f", "{x}", " "],
            ["NULL", 'a"b', "c,d", "e\\f", "{x}", " "],
        ),
        ("SELECT $1::int[]", [[1, None], [None, 4]], [[1, None], [None, 4]]),
        ("SELECT array_ndims($1::int[])", [[[1], [2]], [[3], [4]]], 3),
        ("SELECT $1::date[]", ["2024-01-01", None], ["2024-01-01", None]),
        ("SELECT 1 = ANY($1::int[])", [], False),
        ("SELECT cardinality($1::int[])", [], 0),
        ("SELECT $1::int8", 2**63 - 1, str(2**63 - 1)),
        ("SELECT $1::numeric", 10**30, str(10**30)),
        ("SELECT $1::int IS NULL", None, True),
        ("SELECT NOT $1", True, False),
        ("SELECT $1 * 2", 1.25, 2.5),
    ],
)
async def test_parameters(conn: Conn, sql: str, param: Any, expected: Any) -> None:
    assert await answer(conn, sql, param) == expected


async def test_a_string_list_binds_untyped_so_the_server_infers_the_element_type(
    conn: Conn,
) -> None:
    other = str(uuid.uuid4())
    sql = "SELECT count(*)::int FROM (VALUES ($1::uuid), ($2::uuid)) t(id) WHERE id = ANY($3)"
    assert await fetch(conn, sql, UUID, other, [UUID, None]) == 1


@pytest.mark.parametrize(
    ("param", "pg_type"),
    [
        ([1, 2], "smallint[]"),
        ([1, 2**40], "bigint[]"),
        ([2**70, 1], "numeric[]"),
        ([1, 2.5, None], "double precision[]"),
        ([0.5, 1], "double precision[]"),
        ([True, None], "boolean[]"),
        ([[1, 2], [3, 4]], "smallint[]"),
        ([{"a": 1}], "jsonb"),  # objects inside
        ([1, "a"], "jsonb"),  # mixed kinds
        ([True, 1], "jsonb"),  # a bool is not a number in JSON
        ([[1, 2], [3]], "jsonb"),  # ragged
        ([1, [2]], "jsonb"),  # mixed depth
        ([[1], [[2]]], "jsonb"),  # mixed depth below the top
        ([[], []], "jsonb"),  # PostgreSQL has no empty sub-arrays
        ([[1], None], "jsonb"),  # nor NULL ones
    ],
)
async def test_list_parameters_bind_as_arrays_or_jsonb(
    conn: Conn, param: list[Any], pg_type: str
) -> None:
    assert await fetch(conn, "SELECT pg_typeof($1)::text", param) == pg_type
    if pg_type == "jsonb":  # and it arrives unchanged
        assert await answer(conn, "SELECT $1::jsonb", param) == param


@pytest.mark.parametrize(
    "value",
    [math.inf, -math.inf, math.nan, [1.0, math.inf], [[math.nan]], [10**400, 0.5]],
)
async def test_numbers_a_double_cannot_hold_are_refused(conn: Conn, value: Any) -> None:
    with pytest.raises(InvalidParameters, match="send it as a string"):
        await fetch(conn, "SELECT $1", value)


_FAST = settings(max_examples=50, deadline=None)


@_FAST
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
async def test_any_int64_comes_back_exact(conn: Conn, n: int) -> None:
    assert await fetch(conn, "SELECT $1::int8", n) == str(n)


@_FAST
@given(st.floats(allow_nan=False, allow_infinity=False))
async def test_any_float_round_trips(conn: Conn, x: float) -> None:
    got = await fetch(conn, "SELECT $1::float8", x)
    assert got == x and math.copysign(1, got) == math.copysign(1, x)


@_FAST
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00")))
async def test_any_text_round_trips(conn: Conn, s: str) -> None:
    assert await fetch(conn, "SELECT $1::text", s) == s


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10)


@_FAST
@given(st.lists(st.none() | _TEXT, max_size=8))
async def test_any_text_list_round_trips_as_an_array(conn: Conn, items: list[str | None]) -> None:
    assert await fetch(conn, "SELECT $1::text[]", items) == items


@_FAST
@given(st.binary(max_size=200))
async def test_any_bytes_round_trip_as_base64(conn: Conn, b: bytes) -> None:
    assert await fetch(conn, "SELECT $1::bytea", "\\x" + b.hex()) == base64.b64encode(b).decode()


@_FAST
@given(
    st.decimals(min_value=Decimal("-1e40"), max_value=Decimal("1e40"), allow_nan=False, places=None)
)
async def test_any_decimal_round_trips_exactly(conn: Conn, d: Decimal) -> None:
    assert Decimal(await fetch(conn, "SELECT $1::numeric", str(d))) == d


_OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@_FAST
# A day's margin on both sides keeps the UTC instant within Python's years 1-9999.
@given(st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=_OFFSETS))
async def test_any_timestamptz_comes_back_the_same_instant_in_utc(
    conn: Conn, moment: datetime
) -> None:
    got = await fetch(conn, "SELECT $1::timestamptz", moment.isoformat())
    assert got.endswith("+00:00")
    assert datetime.fromisoformat(got) == moment


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(-1e6, 1e6) | _TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT, children, max_size=4),
    max_leaves=12,
)


@_FAST
@given(st.dictionaries(_TEXT, _JSON, max_size=4))
async def test_any_json_object_round_trips_through_jsonb(conn: Conn, doc: dict[str, Any]) -> None:
    assert await answer(conn, "SELECT $1::jsonb", doc) == doc


# --- setting up a connection ------------------------------------------------------------

_SHOW = "SELECT " + ", ".join(f"current_setting('{name}')" for name in SESSION_SETTINGS)


async def test_configure_applies_the_settings_and_leaves_the_connection_idle(
    pair: LocalPair,
) -> None:
    async with await connect(pair) as fresh:
        await fresh.execute(
            "SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'German'; "
            "SET IntervalStyle = 'postgres'; SET bytea_output = 'escape'; "
            "SET client_encoding = 'LATIN1'"
        )
        await configure_connection(fresh)
        assert fresh.info.transaction_status == pq.TransactionStatus.IDLE
        cur = await fresh.execute(_SHOW)
        assert await cur.fetchone() == tuple(SESSION_SETTINGS.values())
        cur = await fresh.execute(
            "SELECT '2024-01-02 03:04+05'::timestamptz, '\\x00ff41'::bytea, '{\"ż\": 1}'::jsonb"
        )
        row = await cur.fetchone()
        assert orjson.loads(orjson.dumps(row)) == ["2024-01-01T22:04:00+00:00", "AP9B", {"ż": 1}]


async def test_configure_costs_one_round_trip(pair: LocalPair, tmp_path: Path) -> None:
    async with await connect(pair) as fresh:
        with (tmp_path / "trace").open("w+") as trace:
            fresh.pgconn.trace(trace.fileno())
            fresh.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            await configure_connection(fresh)
            fresh.pgconn.untrace()
            trace.seek(0)
            sent = [line.split("\t")[2] for line in trace if line.startswith("F\t")]
    # A simple Query, or Parse/Bind/Execute ending in one Sync: one wait for the server.
    assert sum(message in {"Query", "Sync"} for message in sent) == 1, sent


async def test_configure_commits_on_a_connection_outside_autocommit(pair: LocalPair) -> None:
    async with await connect(pair, autocommit=False) as fresh:
        await configure_connection(fresh)
        assert fresh.info.transaction_status == pq.TransactionStatus.IDLE
        cur = await fresh.execute("SHOW IntervalStyle")
        assert await cur.fetchone() == ("iso_8601",)


async def test_startup_options_and_register_loaders_give_the_same_values(
    pair: LocalPair, conn: Conn
) -> None:
    # app/main.py's way: settings at connection start (RESET ALL keeps them), loaders only.
    sql = (
        "SELECT '2024-05-01 09:30+02'::timestamptz, '1 day'::interval, 2::int8, '\\x01'::bytea,"
        f" '[1,2)'::int4range, 'NaN'::float8, {_SHOW[len('SELECT ') :]}"
    )
    async with await connect(pair, options=startup_options(SESSION_SETTINGS)) as started:
        await register_loaders(started)
        await started.execute("RESET ALL")
        got = await (await started.execute(sql)).fetchone()
    assert got == await (await conn.execute(sql)).fetchone()
    assert got is not None and got[0] == "2024-05-01T07:30:00+00:00"


async def test_temporary_types_are_named_but_not_kept(conn: Conn) -> None:
    # A session makes and drops temporary types at will: each is named for its result, and
    # none stays in the names kept per OID (which would grow for good); a schema's type does.
    names = TypeNames()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    async with conn.transaction(force_rollback=True):
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"CREATE TYPE {schema}.kept AS (n int)")
        for i in range(3):
            await conn.execute(f"CREATE TYPE pg_temp.passing{i} AS (n int)")
            cur = await conn.execute(
                f"SELECT ROW(1)::pg_temp.passing{i} AS t, ROW(2)::{schema}.kept AS k"
            )
            described = await names.columns(conn, "primary", cur.description)
            assert [(c.name, c.type) for c in described] == [("t", f"passing{i}"), ("k", "kept")]
        assert sorted(names._known.values()) == ["kept"]


async def test_wide_results_are_described_but_not_kept(conn: Conn) -> None:
    names = TypeNames()
    for width in (3, 300):
        sql = "SELECT " + ", ".join(f"{k} AS c{k}" for k in range(width))
        cur = await conn.execute(sql)
        first = await names.of_result(conn, "primary", cur.pgresult)
        assert [c.name for c in first] == [f"c{k}" for k in range(width)]
        again = await names.of_result(conn, "primary", cur.pgresult)
        assert (again is first) == (width == 3), width  # a shape met before, or anew
