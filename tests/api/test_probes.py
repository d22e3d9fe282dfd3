"""Probes and /pool/stats against real servers: shapes, status codes, degraded starts."""

from __future__ import annotations

import logging

import pytest

from app.cluster.node import POOL_STAT_NAMES
from app.devdb import LocalPair
from tests.conftest import PairFactory, serving, serving_ready, settings_for
from tests.waiting import eventually


async def test_health_ok_with_roles_of_both_nodes(pair: LocalPair) -> None:
    async with serving_ready(settings_for(pair)) as (_, client):
        response = await client.get("/health")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert body["writer"] == "primary"
        assert body["reasons"] == []
        assert [(n["name"], n["role"], n["reachable"]) for n in body["nodes"]] == [
            ("primary", "primary", True),
            ("mirror", "mirror", True),
        ]
        assert body["nodes"][0]["target"] == f"127.0.0.1:{pair.primary.port}/postgres"


async def test_live_and_ready(pair: LocalPair) -> None:
    async with serving_ready(settings_for(pair)) as (_, client):
        live = await client.get("/health/live")
        assert (live.status_code, live.json()) == (200, {"status": "alive"})
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json() == {
            "ready": True,
            "intent": "write",
            "writer": "primary",
            "readers": ["primary", "mirror"],
        }
        bad = await client.get("/health/ready", params={"intent": "sideways"})
        assert bad.status_code == 400
        assert bad.headers["content-type"] == "application/problem+json"


async def test_pool_stats_reports_psycopg_figures_and_probe_results(pair: LocalPair) -> None:
    settings = settings_for(pair, pool_min_size=2, pool_max_size=5)
    async with serving_ready(settings) as (app, client):
        primary = app.state.cluster.node("primary")
        await eventually(lambda: primary.pool.get_stats().get("pool_available") == 2, "pool fill")
        async with primary.pool.connection() as conn:
            await conn.execute("SELECT 1")
        body = (await client.get("/pool/stats")).json()
    assert body["writer"] == "primary"
    nodes = {n["name"]: n for n in body["nodes"]}
    assert set(nodes) == {"primary", "mirror"}
    for node in nodes.values():
        assert set(node["pool"]) == set(POOL_STAT_NAMES)
        assert node["pool"]["pool_min"] == 2
        assert node["pool"]["pool_max"] == 5
        assert node["reachable"] is True
        assert node["last_check"] is not None
        assert node["timeline"] == 1
    # (the request, and the catalog readings of app/sql/schema_code.py)
    assert nodes["primary"]["pool"]["requests_num"] >= 1
    assert nodes["primary"]["role"] == "primary" and nodes["primary"]["in_recovery"] is False
    assert nodes["mirror"]["role"] == "mirror" and nodes["mirror"]["in_recovery"] is True
    assert nodes["mirror"]["replay_lag_bytes"] is not None
    kinds = [(e["kind"], e["node"]) for e in body["events"]]
    assert ("node_up", "primary") in kinds and ("writer_changed", "primary") in kinds


async def test_docs_and_openapi_are_served(pair: LocalPair) -> None:
    async with serving(settings_for(pair)) as (_, client):
        docs = await client.get("/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()
        spec = (await client.get("/openapi.json")).json()
    assert {"/health", "/health/live", "/health/ready", "/pool/stats"} <= set(spec["paths"])


async def test_mirror_down_at_start_is_degraded_then_recovers(
    make_pair: PairFactory, caplog: pytest.LogCaptureFixture
) -> None:
    own = make_pair()
    mirror = own.mirrors[0]
    mirror.stop("fast")
    caplog.set_level(logging.INFO)
    async with serving_ready(settings_for(own)) as (app, client):
        cluster = app.state.cluster
        await eventually(lambda: cluster.writer is not None, "the writer")
        body = (await client.get("/health")).json()
        assert body["status"] == "degraded"
        assert any(r.startswith("mirror unreachable") for r in body["reasons"])
        assert (await client.get("/health/ready")).status_code == 200
        down_lines = [r for r in caplog.records if "node_down mirror" in r.getMessage()]
        assert len(down_lines) == 1
        assert down_lines[0].levelno == logging.WARNING
        # README (Failover, Events): what is found at start-up is news, logged at INFO...
        assert levels(caplog, "node_up primary") == [logging.INFO]
        assert levels(caplog, "writer_changed primary") == [logging.INFO]
        mirror.start()
        await eventually(
            lambda: cluster.node("mirror").state.reachable is True, "the mirror to come back"
        )
        assert (await client.get("/health")).json()["status"] == "ok"
        # ...every later transition is a WARNING.
        assert levels(caplog, "node_up mirror") == [logging.WARNING]


def levels(caplog: pytest.LogCaptureFixture, start: str) -> list[int]:
    """The levels of the app.cluster event lines that start with `start`."""
    return [
        r.levelno
        for r in caplog.records
        if r.name == "app.cluster" and r.getMessage().startswith(start)
    ]


async def test_primary_down_at_start_is_alive_not_ready_then_ready(make_pair: PairFactory) -> None:
    own = make_pair()
    own.primary.stop("fast")
    async with serving_ready(settings_for(own)) as (app, client):
        assert (await client.get("/health/live")).status_code == 200
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["writer"] is None
        read_ready = await client.get("/health/ready", params={"intent": "read"})
        assert read_ready.status_code == 200
        assert read_ready.json()["readers"] == ["mirror"]
        health = (await client.get("/health")).json()
        assert health["status"] == "degraded"
        assert health["reasons"][0] == "no writable node"
        own.primary.start()

        async def is_ready() -> bool:
            return (await client.get("/health/ready")).status_code == 200

        await eventually(is_ready, "ready once the primary is back")
        # The pool reconnected on its own: a query through it works.
        async with app.state.cluster.node("primary").pool.connection(timeout=5) as conn:
            cur = await conn.execute("SELECT pg_is_in_recovery()")
            assert await cur.fetchone() == (False,)


async def test_everything_down_is_503_and_recovers_by_itself(make_pair: PairFactory) -> None:
    own = make_pair()
    own.stop()
    async with serving_ready(settings_for(own)) as (_, client):
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "down"
        assert (await client.get("/health/ready", params={"intent": "read"})).status_code == 503
        assert (await client.get("/health/live")).status_code == 200
        own.primary.start()
        own.mirrors[0].start()

        async def healthy() -> bool:
            return bool((await client.get("/health")).json()["status"] == "ok")

        await eventually(healthy, "the cluster to recover")


async def test_pool_stats_as_text_for_people(pair: LocalPair) -> None:
    async with serving_ready(settings_for(pair)) as (_, client):
        await client.post("/v1/query", json={"sql": "SELECT 1"})
        response = await client.get("/pool/stats", params={"format": "text"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert lines[0] == "writer: primary"
    assert any(line.startswith("primary    primary  yes") for line in lines)
    assert any(line.startswith("mirror     mirror   yes") for line in lines)
    assert "writer_changed" in response.text
