"""/health for strangers, against the real server process: status, roles and reachability
for anyone; hosts, ports and PostgreSQL's error texts only for a key that may read."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from app.api.auth import hash_key
from app.devdb import SERVICE, LocalPair, free_ports
from tests.conftest import LiveServer, serving_ready, settings_for, start_server, stop_server
from tests.waiting import eventually_sync

READ_KEY = "health-read-key-0123456789"
MIGRATE_KEY = "health-migrate-key-0123456789"
KEYS = [
    {"id": "reader", "sha256": hash_key(READ_KEY), "scopes": ["read"]},
    {"id": "migrator", "sha256": hash_key(MIGRATE_KEY), "scopes": ["migrate"]},
]


@pytest.fixture(scope="module")
def dead_port() -> int:
    return free_ports(1)[0]


@pytest.fixture(scope="module")
def server(pair: LocalPair, dead_port: int) -> Iterator[LiveServer]:
    """A server whose mirror is unreachable, so /health has an error text to tell."""
    live = start_server(
        pair,
        MIRRORPOOL_AUTH="keys",
        MIRRORPOOL_API_KEYS=json.dumps(KEYS),
        MIRRORPOOL_MIRROR_DSN=f"host=127.0.0.1 port={dead_port} user={SERVICE} dbname=postgres",
    )
    yield live
    stop_server(live)


def health(server: LiveServer, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.url + "/health", headers=headers, timeout=5)


def test_health_without_a_key_names_no_host_port_or_error(
    server: LiveServer, pair: LocalPair, dead_port: int
) -> None:
    eventually_sync(lambda: health(server).json()["status"] == "degraded", "the mirror down")
    for key in (None, "not-a-key", MIGRATE_KEY):
        response = health(server, key)
        assert response.status_code == 200
        body = response.json()
        assert body == {
            "status": "degraded",
            "writer": "primary",
            "nodes": [
                {"name": "primary", "role": "primary", "reachable": True},
                {"name": "mirror", "role": "unknown", "reachable": False},
            ],
        }, key
        for secret in ("127.0.0.1", str(pair.primary.port), str(dead_port), "refused"):
            assert secret not in response.text, (key, secret)


def test_health_with_a_read_key_has_the_details(server: LiveServer, dead_port: int) -> None:
    eventually_sync(lambda: health(server).json()["status"] == "degraded", "the mirror down")
    body = health(server, READ_KEY).json()
    assert body["nodes"][1]["target"] == f"127.0.0.1:{dead_port}/postgres"
    assert any(str(dead_port) in reason for reason in body["reasons"]), body["reasons"]


def test_the_probes_answer_without_a_key(server: LiveServer) -> None:
    assert httpx.get(server.url + "/health/live", timeout=5).status_code == 200
    ready = httpx.get(server.url + "/health/ready", timeout=5)
    assert (ready.status_code, ready.json()["writer"]) == (200, "primary")


async def test_health_details_can_be_made_public(pair: LocalPair) -> None:
    settings = settings_for(pair, auth="keys", api_keys=KEYS, health_details="public")
    async with serving_ready(settings) as (_, client):
        body = (await client.get("/health")).json()
    assert body["nodes"][0]["target"] == f"127.0.0.1:{pair.primary.port}/postgres"
    assert body["reasons"] == []
