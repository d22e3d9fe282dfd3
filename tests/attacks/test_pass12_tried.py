"""Twelfth review pass (attacker): tried and held, kept so they keep holding.

Odd values and odd statements on /v1/query, /v1/query/stream and /sql never get a 500 and
leave the shared connection serving the next key; a read key's request that passes its own
deadline or goes over its max_rows is stopped without the cancel reaching the next key's
statement on the one shared connection; the migration endpoints, /pool/stats and, with
MIRRORPOOL_METRICS_PUBLIC=false, /metrics refuse keys without their scopes; /health gives a
stranger no targets and /metrics names no key, SQL or parameter; a path that only looks like
/v1/query runs nothing without a key; an HTTP method of the attacker's own makes no new
label in /metrics (httptools answers it 400 before the app); catalog functions refused to a
read key stay refused under overload-looking and attribute spellings.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from typing import Any

import httpx
import pytest

from tests.attacks.conftest import KEYS, headers, query
from tests.conftest import start_server, stop_server

ODD = [
    "SELECT repeat('x', 50000000)",
    "SELECT 1 AS a, 2 AS a",
    "SELECT 'x', NULL",
    "SELECT '{[1,2)}'::int4multirange, '[1,2)'::int4range, '(1,2)'::point",
    "SELECT ARRAY[ROW(1,'a')], ROW(1, ROW(2, ARRAY[ROW(3)]))",
    "SELECT txid_current_snapshot(), pg_current_snapshot(), '1'::xid8, '(0,1)'::tid",
    "SELECT 'NaN'::numeric, 'infinity'::timestamptz, '-infinity'::date, 'Infinity'::float8",
    "SELECT '\"\\u0000\"'::json",
    "SELECT B'101'::varbit, 'a'::\"char\", 'a b'::tsvector, '1'::money",
    "SELECT '294276-12-31 23:59:59'::timestamp, '4713-01-01 BC'::date",
    "SELECT 10::oid, 'pub'::regclass, 'int4'::regtype, '=r/postgres'::aclitem",
    "SELECT array_fill(1, ARRAY[1000000])",
    "SELECT '[1:2]={1,2}'::int[], '{}'::int[][], ARRAY[[1,2],[3,4]]",
    "SELECT 1e-300::numeric, 12345678901234567890::numeric * 1e200",
    "SELECT x FROM generate_series(1, 200000) x",
    "EXPLAIN (FORMAT JSON) SELECT 1",
    "SHOW ALL",
    "VALUES (1, 'a'), (2, NULL)",
    "TABLE pub",
    "SELECT '<a/>'::xml, '\\x00ff'::bytea, '00:00:00+1559'::timetz",
    "SELECT '1'::int2vector, '1'::oidvector, '0/0'::pg_lsn, '$.a'::jsonpath",
    "SELECT circle '((0,0),1)', box '((0,0),(1,1))', path '((0,0),(1,1))', line '{1,2,3}'",
]


@pytest.mark.parametrize("route", ["/v1/query", "/v1/query/stream", "/sql"])
async def test_odd_values_get_no_500(client: httpx.AsyncClient, route: str) -> None:
    for sql in ODD:
        if route == "/sql":
            r = await client.post(
                route,
                content=json.dumps({"query": sql}).encode(),
                headers={**headers("read"), "Content-Type": "text/plain"},
            )
        else:
            r = await client.post(
                route, json={"sql": sql, "row_format": "object"}, headers=headers("read")
            )
        assert r.status_code < 500 or r.status_code == 507, (sql, r.status_code, r.text[:300])
        nxt = await query(client, "write", "SELECT 42")
        assert nxt.json()["rows"] == [[42]], (sql, nxt.text)


@pytest.mark.parametrize(
    "attack",
    [
        {"sql": "SELECT pg_sleep(1)", "timeout_ms": 50},
        {"sql": "SELECT g FROM generate_series(1, 1000000) g", "max_rows": 3},
        {"sql": "SELECT repeat('x', 1000) FROM generate_series(1, 100000)"},
    ],
    ids=["own-deadline", "max-rows", "response-bytes"],
)
async def test_a_stopped_read_does_not_cancel_the_next_keys_statement(
    client: httpx.AsyncClient, attack: dict[str, Any]
) -> None:
    for _ in range(3):
        await client.post("/v1/query", json=attack, headers=headers("read"))
        victim = await query(client, "admin", "SELECT pg_sleep(0.05), 'done'")
        assert victim.status_code == 200, victim.text
        assert victim.json()["rows"][0][1] == "done"


@pytest.mark.parametrize("key", ["read", "write", "role", "role2"])
async def test_keys_without_the_scope_reach_no_migration_or_stats(
    client: httpx.AsyncClient, key: str
) -> None:
    for method, path in [
        ("GET", "/v1/migrations"),
        ("GET", "/v1/migrations/plan"),
        ("POST", "/v1/migrations/apply"),
        ("POST", "/v1/migrations/rollback"),
        ("POST", "/v1/migrations/repair"),
        ("POST", "/v1/migrations/baseline"),
        ("GET", "/pool/stats"),
    ]:
        body = {"target": 0, "dry_run": True} if method == "POST" else None
        r = await client.request(method, path, json=body, headers=headers(key))
        assert r.status_code in (401, 403), (key, path, r.status_code, r.text)


async def test_strangers_and_metrics_see_no_targets_keys_or_sql(
    client: httpx.AsyncClient,
) -> None:
    marker = uuid.uuid4().hex
    r = await query(client, "read", f"SELECT $1::text AS {'m' + marker}", params=[marker])
    assert r.status_code == 200, r.text
    await query(client, "read", f"SELECT no_such_column_{marker}")
    health = await client.get("/health")
    assert health.status_code == 200 and "target" not in health.text, health.text
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    for secret in (marker, '"reader"', '"writer"', '"limited"', *KEYS.values()):
        assert secret not in metrics.text, secret


@pytest.mark.parametrize("path", ["//v1/query", "/v1/query/", "/v1//query", "/V1/query"])
async def test_paths_like_the_query_route_run_nothing_without_a_key(
    client: httpx.AsyncClient, path: str
) -> None:
    r = await client.post(path, json={"sql": "SELECT pg_sleep(0)"})
    assert r.status_code in (401, 404, 405, 307, 308), (path, r.status_code, r.text)
    assert "pg_sleep" not in r.text


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_catalog.lo_from_bytea(0, 'x'::bytea, 1)",
        "SELECT (1::bigint).pg_try_advisory_lock",
        "SELECT t.lo_creat FROM unnest(ARRAY[-1]) AS t",
        "SELECT pg_catalog.pg_advisory_xact_lock(1, 2)",
        "SELECT * FROM pg_catalog.pg_try_advisory_lock(1)",
    ],
)
async def test_refused_catalog_functions_stay_refused_to_a_read_key(
    client: httpx.AsyncClient, sql: str
) -> None:
    r = await query(client, "read", sql)
    assert r.status_code in (400, 403), (sql, r.text)


def test_an_own_http_method_makes_no_metrics_label(pair: Any) -> None:
    server = start_server(pair)
    try:
        method = "MP" + uuid.uuid4().hex[:8].upper()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(f"{method} /health HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            answer = sock.recv(4096).decode("latin-1")
        assert answer.startswith("HTTP/1.1 4"), answer
        metrics = httpx.get(server.url + "/metrics", timeout=5).text
        assert method not in metrics
    finally:
        stop_server(server)


async def test_a_concurrent_flood_of_quick_reads_leaves_other_keys_answered(
    client: httpx.AsyncClient,
) -> None:
    flood = [query(client, "read", "SELECT pg_sleep(0.02)") for _ in range(20)]
    victim = query(client, "admin", "SELECT 'done'")
    *_, answer = await asyncio.gather(*flood, victim)
    assert answer.status_code == 200 and answer.json()["rows"] == [["done"]], answer.text
