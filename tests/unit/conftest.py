"""The engine's parts on their own: a cluster on the shared pair (real PostgreSQL, no HTTP)
and the checkouts that take its connections."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.cluster.cluster import Cluster
from app.devdb import LocalPair
from app.sql.checkout import Checkouts
from app.supervisor import Supervisor
from tests.conftest import settings_for

ClusterFactory = Callable[..., Any]


def backend_alive(pair: LocalPair, pid: int) -> bool:
    """True while pg_stat_activity lists the backend, from the harness's own connection."""
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    assert row is not None
    return bool(row[0])


@pytest.fixture
async def make_cluster(pair: LocalPair) -> AsyncIterator[ClusterFactory]:
    """Open a cluster on the shared pair (settings as the tests' service has them, with
    `overrides`), its writer found; closed after the test."""
    made: list[Cluster] = []

    async def make(**overrides: Any) -> Cluster:
        values = {"application_name": f"mp_unit_{uuid.uuid4().hex[:8]}", **overrides}
        cluster = Cluster(settings_for(pair, **values), supervisor=Supervisor())
        made.append(cluster)
        await cluster.open()
        assert await cluster.wait_for_writer(10) is not None
        return cluster

    yield make
    for cluster in made:
        await cluster.close(5)
        await cluster.supervisor.close(5)


@pytest.fixture
async def cluster(make_cluster: ClusterFactory) -> Cluster:
    """A cluster whose pools hold at most two connections."""
    made: Cluster = await make_cluster(pool_min_size=0, pool_max_size=2, pool_timeout=5)
    return made


def checkouts_of(cluster: Cluster, pool_timeout: float = 5.0, shares: bool = False) -> Checkouts:
    """The checkouts of a cluster on sessions of our own."""
    return Checkouts(cluster.backends, pool_timeout, own_sessions=True, shares=shares)
