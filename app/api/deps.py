"""Dependencies routes declare in their signatures."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.cluster.cluster import Cluster


def get_cluster(request: Request) -> Cluster:
    """The Cluster the lifespan built."""
    cluster: Cluster = request.app.state.cluster
    return cluster


ClusterDep = Annotated[Cluster, Depends(get_cluster)]
