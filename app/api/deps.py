"""Dependencies routes declare in their signatures."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.cluster.cluster import Cluster
from app.settings import Settings
from app.sql.engine import Engine


async def get_cluster(request: Request) -> Cluster:
    """The Cluster the lifespan built."""
    cluster: Cluster = request.app.state.cluster
    return cluster


async def get_engine(request: Request) -> Engine:
    """The query Engine."""
    engine: Engine = request.app.state.engine
    return engine


async def get_settings(request: Request) -> Settings:
    """The app's Settings."""
    settings: Settings = request.app.state.settings
    return settings


ClusterDep = Annotated[Cluster, Depends(get_cluster)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
