"""Tests of what ships beside the code: the image, the lock, deploy/ (compose, Kubernetes,
Prometheus). They run offline, with no Docker engine and no Kubernetes cluster; what deploy/
does to a database (its init SQL, its migrate command, its logins) runs for real on local
PostgreSQL servers (app/devdb/, tests/deploy/database.py)."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.api.auth import hash_key
from app.main import create_app
from app.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


async def status_of(path: str) -> int:
    """What mirrorpool answers a GET of `path` (query string included) with, as a probe of a
    freshly started pod would get it: its database not reached yet."""
    settings = load_settings(
        primary_dsn="host=127.0.0.1 port=1 dbname=app",
        api_keys=[{"id": "t", "sha256": hash_key("t"), "scopes": ["read"]}],
    )
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://mirrorpool") as client:
        return (await client.get(path)).status_code
