"""/metrics: Prometheus text that parses, with counters that move when things happen."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.devdb import LocalPair
from tests.conftest import PairFactory, serving_ready, settings_for
from tests.waiting import eventually


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def get_metrics(
    client: httpx.AsyncClient,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return scrape(response.text)


async def test_requests_errors_timeouts_and_nodes_are_counted(pair: LocalPair) -> None:
    async with serving_ready(settings_for(pair)) as (_, client):
        before = await get_metrics(client)
        assert (await client.post("/v1/query", json={"sql": "SELECT 1"})).status_code == 200
        assert (await client.post("/v1/query", json={"sql": "SELECT 1/0"})).status_code == 400
        timeout = await client.post(
            "/v1/query", json={"sql": "SELECT pg_sleep(2)", "timeout_ms": 50}
        )
        assert timeout.status_code == 504
        assert (await client.get("/health")).status_code == 200
        after = await get_metrics(client)
    labels = {"route": "/v1/query", "method": "POST"}
    for status, moved in (("200", 1), ("400", 1), ("504", 1)):
        delta = value(after, "mirrorpool_http_requests_total", **labels, status=status) - value(
            before, "mirrorpool_http_requests_total", **labels, status=status
        )
        assert delta == moved, status
    assert (
        value(after, "mirrorpool_http_requests_total", route="/health", method="GET", status="200")
        >= 1
    )
    assert value(after, "mirrorpool_http_request_duration_seconds_count", **labels) >= 3
    assert value(after, "mirrorpool_query_problems_total", kind="timeout") >= 1
    assert value(after, "mirrorpool_query_problems_total", kind="database") >= 1
    assert value(after, "mirrorpool_node_up", node="primary") == 1
    assert value(after, "mirrorpool_node_writer", node="primary") == 1
    assert value(after, "mirrorpool_node_role", node="mirror", role="mirror") == 1
    assert value(after, "mirrorpool_pool_connections", node="primary") >= 1
    assert ("mirrorpool_node_replication_lag_bytes", (("node", "mirror"),)) in after


async def test_failover_moves_the_event_counters(make_pair: PairFactory) -> None:
    own = make_pair()
    settings = settings_for(own, health_interval=0.1, health_threshold=1)
    async with serving_ready(settings) as (app, client):
        before = await get_metrics(client)
        own.primary.kill()
        await eventually(lambda: app.state.cluster.writer is None, "the writer to be lost")
        after = await get_metrics(client)
    for kind in ("node_down", "writer_lost"):
        moved = value(after, "mirrorpool_cluster_events_total", kind=kind) - value(
            before, "mirrorpool_cluster_events_total", kind=kind
        )
        assert moved >= 1, kind
    assert value(after, "mirrorpool_node_up", node="primary") == 0
