"""MIRRORPOOL_WORKERS=2: two processes, one service. /metrics counts every worker's requests,
/pool/stats lists every worker's pools, and /health says which worker answered."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.conftest import LiveServer, start_server, stop_server
from tests.waiting import eventually_sync

COUNTER = re.compile(
    r'^mirrorpool_http_requests_total\{method="POST",route="/v1/query",status="200"\} (\S+)$',
    re.M,
)


@pytest.fixture(scope="module")
def two_workers(pair: LocalPair, request_path: str) -> Iterator[LiveServer]:
    server = start_server(
        pair, MIRRORPOOL_WORKERS="2", MIRRORPOOL_POOL_MIN_SIZE="1", MIRRORPOOL_POOL_MAX_SIZE="2"
    )
    # Ready is one worker ready: the other may still be starting.
    eventually_sync(lambda: len(live_workers(server)) == 2, "both workers to be live", timeout=30)
    yield server
    stop_server(server)


def fresh(server: LiveServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A request on a connection of its own, so that either worker may take it."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        return client.request(method, path, headers={"connection": "close"}, **kwargs)


def live_workers(server: LiveServer) -> list[dict[str, Any]]:
    stats = fresh(server, "GET", "/pool/stats").json()
    return [w for w in stats["workers"] if w["live"]]


def test_metrics_count_every_workers_requests(two_workers: LiveServer) -> None:
    sent = 0
    # Queries on connections of their own until both workers have served some: the kernel
    # hands connections to either.
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(8) as threads:
        while True:
            answers = list(threads.map(
                lambda i: fresh(two_workers, "POST", "/v1/query",
                                json={"sql": "SELECT $1::int", "params": [i]}),
                range(40),
            ))  # fmt: skip
            assert [a.status_code for a in answers] == [200] * 40
            sent += 40
            workers = live_workers(two_workers)
            assert len(workers) == 2, workers
            if all(w["pools"]["primary"]["requests_num"] > 0 for w in workers):
                break
            assert time.monotonic() < deadline, f"one worker served nothing: {workers}"
    # Every scrape, whichever worker answers it, counts every request once.
    for _ in range(12):
        text = fresh(two_workers, "GET", "/metrics").text
        counted = COUNTER.search(text)
        assert counted is not None, text[:2000]
        assert float(counted.group(1)) == sent

    # Pool gauges add up the workers' pools.
    def gauges_add_up() -> bool:
        text = fresh(two_workers, "GET", "/metrics").text
        match = re.search(r'^mirrorpool_pool_connections\{node="primary"\} (\S+)$', text, re.M)
        total = sum(w["pools"]["primary"]["pool_size"] for w in live_workers(two_workers))
        return match is not None and float(match.group(1)) == total >= 2

    eventually_sync(gauges_add_up, "pool gauges to add up over both workers", timeout=10)


def test_pool_stats_and_health_say_which_worker_answered(two_workers: LiveServer) -> None:
    pids = {w["pid"] for w in live_workers(two_workers)}
    assert len(pids) == 2
    seen: set[int] = set()
    deadline = time.monotonic() + 20
    while seen != pids:
        health = fresh(two_workers, "GET", "/health")
        assert health.status_code == 200
        seen.add(int(health.headers["x-mirrorpool-worker"]))
        stats = fresh(two_workers, "GET", "/pool/stats").json()
        assert stats["worker"] in pids
        seen.add(stats["worker"])
        assert time.monotonic() < deadline, f"answers came from {seen}, workers are {pids}"
    text = fresh(two_workers, "GET", "/pool/stats", params={"format": "text"}).text
    assert all(str(pid) in text for pid in pids), text
