"""Limits and hostile input: every refusal is a 4xx problem, never a 500."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from app.devdb import OWNER, LocalPair
from tests.conftest import PairFactory, serving_ready, settings_for
from tests.waiting import eventually


async def post(client: httpx.AsyncClient, body: Any, path: str = "/v1/query") -> httpx.Response:
    return await client.post(path, json=body)


async def test_statement_timeout_is_504_with_57014(pair: LocalPair) -> None:
    async with serving_ready(settings_for(pair)) as (_, client):
        started = time.monotonic()
        response = await post(client, {"sql": "SELECT pg_sleep(5)", "timeout_ms": 200})
        assert response.status_code == 504
        assert response.json()["sqlstate"] == "57014"
        assert time.monotonic() - started < 3
        fine = await post(client, {"sql": "SELECT 1", "timeout_ms": 200})
        assert fine.status_code == 200


async def test_timeout_and_rows_above_their_ceilings_are_refused(pair: LocalPair) -> None:
    settings = settings_for(
        pair,
        statement_timeout_ms=500,
        max_statement_timeout_ms=1000,
        max_rows_ceiling=10,
        max_rows=5,
    )
    async with serving_ready(settings) as (_, client):
        slow = await post(client, {"sql": "SELECT 1", "timeout_ms": 1001})
        assert slow.status_code == 400
        assert "1000" in slow.json()["detail"]
        many = await post(client, {"sql": "SELECT 1", "max_rows": 11})
        assert many.status_code == 400
        default = await post(client, {"sql": "SELECT generate_series(1, 7)"})
        assert default.json()["row_count"] == 5
        assert default.json()["truncated"] is True


async def test_max_rows_truncates(pair: LocalPair) -> None:
    async with serving_ready(settings_for(pair)) as (_, client):
        body = (await post(client, {"sql": "SELECT generate_series(1, 100)", "max_rows": 3})).json()
        assert body["rows"] == [[1], [2], [3]]
        assert body["truncated"] is True
        exact = (await post(client, {"sql": "SELECT generate_series(1, 3)", "max_rows": 3})).json()
        assert exact["truncated"] is False


async def test_response_size_cap_cuts_rows(pair: LocalPair) -> None:
    async with serving_ready(settings_for(pair, max_response_bytes=4096)) as (_, client):
        response = await post(
            client, {"sql": "SELECT repeat('x', 100) FROM generate_series(1, 100)"}
        )
        assert response.status_code == 200
        assert len(response.content) <= 4096
        body = response.json()
        assert body["truncated"] is True
        assert 0 < body["row_count"] < 100
        assert body["row_count"] == len(body["rows"])


async def test_lock_timeout_fails_fast_with_409(pair: LocalPair) -> None:
    with pair.primary.connect(user=OWNER) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS locked_t (id int)")
    async with serving_ready(settings_for(pair, lock_timeout_ms=300)) as (_, client):
        with pair.primary.connect() as holder:
            holder.execute("BEGIN")
            holder.execute("LOCK TABLE locked_t IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            response = await post(client, {"sql": "SELECT * FROM locked_t"})
            assert time.monotonic() - started < 3
            holder.execute("ROLLBACK")
        assert response.status_code == 409
        assert response.json()["sqlstate"] == "55P03"
        assert response.json()["retryable"] is True


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "json"),
        (b'{"sql": "SELECT 1"', "json"),
        (b'{"sql": 42}', "sql"),
        (b'{"sql": "SELECT 1", "params": "nope"}', "params"),
        (b'{"sql": "SELECT 1", "timeout_ms": -5}', "timeout_ms"),
        (b'{"sql": "SELECT 1", "bogus": true}', "bogus"),
        (b'{"sql": "SELECT \\u0000"}', "NUL"),
        (b'{"sql": "SELECT $1::text", "params": ["a\\u0000b"]}', "NUL"),
        (b'{"sql": "SELECT \xff\xfe"}', ""),
        (b"[]", ""),
        (b"", ""),
    ],
)
async def test_malformed_requests_are_400_problems(
    pair: LocalPair, content: bytes, fragment: str
) -> None:
    async with serving_ready(settings_for(pair)) as (_, client):
        response = await client.post(
            "/v1/query", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code in {400, 422}, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert fragment.lower() in json.dumps(response.json()).lower()


async def test_body_limit_is_413(pair: LocalPair) -> None:
    async with serving_ready(settings_for(pair, max_body_bytes=2048)) as (_, client):
        big = {"sql": "SELECT $1::text", "params": ["x" * 4096]}
        response = await post(client, big)
        assert response.status_code == 413
        assert response.json()["type"] == "urn:mirrorpool:problem:payload-too-large"

        async def chunks() -> Any:
            yield b'{"sql": "SELECT $1::text", "params": ["'
            for _ in range(10):
                yield b"y" * 1024
            yield b'"]}'

        streamed = await client.post(
            "/v1/query", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413


async def test_sql_length_and_parameter_count_limits(pair: LocalPair) -> None:
    async with serving_ready(settings_for(pair, max_sql_length=50, max_params=3)) as (_, client):
        long_sql = await post(client, {"sql": "SELECT " + "1 + " * 20 + "1"})
        assert long_sql.status_code == 400
        assert "50" in long_sql.json()["detail"]
        many = await post(client, {"sql": "SELECT $1, $2, $3, $4", "params": [1, 2, 3, 4]})
        assert many.status_code == 400
        assert "limit is 3" in many.json()["detail"]


async def test_pool_exhaustion_is_a_prompt_503(pair: LocalPair) -> None:
    settings = settings_for(
        pair, pool_min_size=1, pool_max_size=1, pool_timeout=0.3, pool_max_waiting=1
    )
    async with serving_ready(settings) as (app, client):
        busy = asyncio.ensure_future(post(client, {"sql": "SELECT pg_sleep(1.5)"}))
        pool = app.state.cluster.node("primary").pool
        await eventually(lambda: pool.get_stats()["pool_available"] == 0, "the connection taken")
        waiting = asyncio.ensure_future(post(client, {"sql": "SELECT 1"}))
        await eventually(lambda: pool.get_stats()["requests_waiting"] == 1, "a queued request")
        started = time.monotonic()
        refused = await post(client, {"sql": "SELECT 1"})
        assert time.monotonic() - started < 0.2
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["type"] == "urn:mirrorpool:problem:pool-exhausted"
        timed_out = await waiting
        assert timed_out.status_code == 503
        assert (await busy).status_code == 200


async def test_frozen_server_cannot_hold_a_request_past_its_deadline(
    make_pair: PairFactory,
) -> None:
    own = make_pair(mirrors=0)
    async with serving_ready(settings_for(own, health_timeout=0.5)) as (_, client):
        assert (await post(client, {"sql": "SELECT 1"})).status_code == 200
        own.primary.freeze()
        try:
            started = time.monotonic()
            response = await post(client, {"sql": "SELECT 1", "timeout_ms": 300})
            elapsed = time.monotonic() - started
        finally:
            own.primary.thaw()
        assert response.status_code in {503, 504}
        assert elapsed < 3
