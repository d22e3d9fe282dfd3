"""Shared fixtures: real PostgreSQL pairs from app/devdb/ and the app running against them."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from psycopg import sql

from app.devdb import OWNER, SERVICE, LocalPair, free_ports
from app.main import create_app
from app.settings import Settings, load_settings
from tests.waiting import eventually, eventually_sync

# How POST /v1/query, /v1/transaction and /sql are answered: by their fast answers
# (app/api/fast_lane.py), or by their FastAPI routes (MIRRORPOOL_FAST_PATH=false). The apps and
# servers the fixtures below build follow `request_path`; tests/api/conftest.py runs the
# tests of the query routes both ways.
REQUEST_PATHS = ("fast", "fastapi")


@dataclass
class _RequestPath:
    fast_path: bool = True


_REQUEST_PATH = _RequestPath()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--every-api-test-both-ways",
        action="store_true",
        help="run every test in tests/api with the fast answers and through FastAPI, not "
        "only the tests of the query routes",
    )


@pytest.fixture(scope="session", autouse=True)
def request_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """ "fast" (the default) or "fastapi": how the apps and servers of this test answer the
    query routes, unless a test's own settings say."""
    path: str = getattr(request, "param", "fast")
    _REQUEST_PATH.fast_path = path == "fast"
    yield path
    _REQUEST_PATH.fast_path = True


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    """A folder the servers' OS user can reach (pytest's own tmp dirs are private)."""
    path = Path(tempfile.mkdtemp(prefix="mirrorpool-tests-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pair(work_dir: Path) -> Iterator[LocalPair]:
    """The shared primary + mirror. Tests must not stop, kill or promote its nodes."""
    with LocalPair(work_dir / "shared") as shared:
        yield shared


@pytest.fixture
def database(pair: LocalPair) -> Iterator[str]:
    """A fresh database on the shared pair, dropped afterwards."""
    name = f"db_{uuid.uuid4().hex[:12]}"
    with pair.primary.connect() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield name
    with pair.primary.connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def as_owner(pair: LocalPair, *statements: str, dbname: str = "postgres") -> None:
    """Run statements as the schema's owner, as a migration would: the service's own login
    creates nothing (app/devdb/logins.py), and may use what the owner creates."""
    with pair.primary.connect(dbname, user=OWNER) as conn:
        for statement in statements:
            conn.execute(statement)


def login_role(pair: LocalPair, prefix: str = "mp_role") -> tuple[str, str]:
    """A new database role that may log in (and do nothing else yet): its name and password,
    for a key's `role` and MIRRORPOOL_ROLE_PASSWORDS."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(12)
    with pair.primary.connect() as conn:  # roles are the cluster's: the superuser makes them
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    return name, password


PairFactory = Callable[..., LocalPair]


@pytest.fixture
def make_pair(work_dir: Path, request: pytest.FixtureRequest) -> Iterator[PairFactory]:
    """Build pairs of the test's own, for tests that stop, kill, freeze or promote nodes."""
    made: list[LocalPair] = []

    def make(mirrors: int = 1, synchronous: bool = False) -> LocalPair:
        name = f"{request.node.name}-{len(made)}".replace("[", "-").replace("]", "")
        own = LocalPair(work_dir / name[:60], mirrors=mirrors, synchronous=synchronous)
        made.append(own)
        own.start()
        return own

    yield make
    for own in made:
        own.destroy()


def settings_for(pair: LocalPair, dbname: str = "postgres", **overrides: Any) -> Settings:
    """Settings pointing at a pair as production would (the service's unprivileged login,
    migrations as the schema's owner), with a quick health monitor."""
    values: dict[str, Any] = {
        "primary_dsn": pair.primary.dsn(dbname, user=SERVICE),
        "mirror_dsn": ",".join(m.dsn(dbname, user=SERVICE) for m in pair.mirrors) or None,
        "migrations_dsn": pair.migrations_dsn(dbname),
        "health_interval": 0.1,
        "health_timeout": 1.0,
        "health_threshold": 1,
        "pool_min_size": 1,
        "pool_max_size": 4,
        "shutdown_timeout": 5,
        "auth": "disabled",
        "fast_path": _REQUEST_PATH.fast_path,
    }
    values.update(overrides)
    return load_settings(**values)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Run the app's lifespan and give a client that talks to it in-process."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        # A loopback name: with auth disabled, other Host names are refused (app/api/gate.py).
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield app, client


@asynccontextmanager
async def serving_ready(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """serving(), once every node has been probed."""
    async with serving(settings) as (app, client):
        cluster = app.state.cluster
        await eventually(
            lambda: all(n.state.reachable is not None for n in cluster.nodes), "first probes"
        )
        yield app, client


class LiveServer:
    """`mirrorpool serve` in a process of its own, for tests that need real sockets."""

    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def rss_kib(self, field: str = "VmRSS") -> int:
        """The server's resident memory (VmRSS) or its peak (VmHWM), in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} for pid {self.proc.pid}")


def start_server(pair: LocalPair, **env: str) -> LiveServer:
    """Start `mirrorpool serve` against a pair and wait until it is ready (with no mirror
    when `env` gives MIRRORPOOL_MIRROR_DSN as "")."""
    port = free_ports(1)[0]
    base = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")}
    variables = {
        "MIRRORPOOL_PRIMARY_DSN": pair.primary.dsn(user=SERVICE),
        "MIRRORPOOL_MIGRATIONS_DSN": pair.migrations_dsn(),
        "MIRRORPOOL_PORT": str(port),
        "MIRRORPOOL_HEALTH_INTERVAL": "0.2",
        "MIRRORPOOL_LOG_LEVEL": "warning",
        "MIRRORPOOL_AUTH": "disabled",
        "MIRRORPOOL_FAST_PATH": str(_REQUEST_PATH.fast_path).lower(),
    }
    if pair.mirrors:
        variables["MIRRORPOOL_MIRROR_DSN"] = ",".join(m.dsn(user=SERVICE) for m in pair.mirrors)
    variables.update(env)
    if not variables.get("MIRRORPOOL_MIRROR_DSN", True):
        del variables["MIRRORPOOL_MIRROR_DSN"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve"],
        env=base | variables,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = LiveServer(proc, port)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            return httpx.get(server.url + "/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    eventually_sync(ready, "the server to be ready", timeout=30)
    return server


def stop_server(server: LiveServer) -> None:
    """SIGTERM the server and wait for it."""
    server.proc.terminate()
    try:
        server.proc.wait(20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="session")
def live_server(pair: LocalPair, request_path: str) -> Iterator[LiveServer]:
    """One real server on the shared pair (one for each request path)."""
    server = start_server(pair)
    yield server
    stop_server(server)
