"""The FastAPI application: create_app(settings) and the lifespan that owns the cluster."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api import pool, probes
from app.api.inflight import InFlight, InFlightMiddleware
from app.cluster.cluster import Cluster
from app.settings import Settings, load_settings

logger = logging.getLogger(__name__)

DESCRIPTION = """\
PostgreSQL over HTTP: parameterised SQL through a connection pool per node, versioned
migrations, and failover to a streaming mirror when the primary is lost.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The cluster is created (and its pools opened) by the lifespan."""
    settings = settings or load_settings()
    # Built here, not in the lifespan, so a missing DSN fails before the server starts.
    cluster = Cluster(settings)
    inflight = InFlight()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await cluster.open()
        logger.info(
            "mirrorpool %s started with nodes %s",
            __version__,
            ", ".join(f"{n.name} ({n.target})" for n in cluster.nodes),
        )
        try:
            yield
        finally:
            if not await inflight.drain(settings.shutdown_timeout):
                logger.warning(
                    "%d requests still running after %g s; closing anyway",
                    inflight.count,
                    settings.shutdown_timeout,
                )
            await cluster.close(timeout=settings.shutdown_timeout)
            logger.info("mirrorpool stopped; pools closed")

    app = FastAPI(
        title="mirrorpool",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.cluster = cluster
    app.add_middleware(InFlightMiddleware, inflight=inflight)
    app.include_router(probes.router)
    app.include_router(pool.router)
    return app
