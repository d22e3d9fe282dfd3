"""The real Neon driver and drizzle-orm (Node) against a real mirrorpool server.

The Node packages are pinned in package.json and package-lock.json beside this file and
installed with `npm ci` into tests/neon/node_modules (ignored by git) the first time these
tests run, so `make test` works on a fresh clone with Node 20 and the npm registry.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.api.auth import hash_key
from app.devdb import OWNER, LocalPair
from tests.conftest import LiveServer, as_owner, start_server, stop_server

HERE = Path(__file__).parent
MODULES = HERE / "node_modules"
CLIENT = HERE / "client.mjs"
# Prisma 7 needs 20.19 (the driver and drizzle: 19 or later).
MIN_NODE = (20, 19)
SCHEMA = HERE / "prisma" / "schema.prisma"
PRISMA_CLIENT = MODULES / ".mirrorpool-prisma"
# Small enough that a result over it is quick to make; POST /sql must refuse it, not cut it.
MAX_ROWS = 50

KEYS = {name: f"neon-{name}-{uuid.uuid4().hex}" for name in ("write", "read")}


def node_binary() -> str:
    """The `node` on PATH, at least version 20 (the driver needs fetch and web streams)."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed; the Neon driver tests need Node >= 20")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    found = tuple(int(part) for part in version.stdout.strip().lstrip("v").split(".")[:2])
    if found < MIN_NODE:
        raise RuntimeError(
            f"node {version.stdout.strip()} is too old: need >= {'.'.join(map(str, MIN_NODE))}"
        )
    return node


@pytest.fixture(scope="session")
def node_modules() -> str:
    """The pinned packages, installed once with `npm ci` when missing or older than the lock,
    and Prisma's client generated from prisma/schema.prisma; the `node` to run them with."""
    node = node_binary()
    lock = HERE / "package-lock.json"
    with lock.open("rb") as held:
        # (one install at a time: `make test` runs the tests in several processes)
        fcntl.flock(held, fcntl.LOCK_EX)
        _install(node, lock)
    return node


def _install(node: str, lock: Path) -> None:
    stamp = MODULES / ".package-lock.json"  # npm writes it on every install
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed; it comes with Node")
        # No install scripts: none of these packages needs one, and Prisma's would fetch
        # engine binaries from outside the npm registry.
        subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            check=True,
            timeout=300,
        )
    generated = PRISMA_CLIENT / "index.js"
    if not generated.exists() or generated.stat().st_mtime < SCHEMA.stat().st_mtime:
        # Generating runs no engine (only migrations need Prisma's schema engine): a stand-in
        # path keeps the CLI from downloading one from binaries.prisma.sh.
        subprocess.run(
            [node, str(MODULES / "prisma" / "build" / "index.js"), "generate",
             "--schema", str(SCHEMA)],
            cwd=HERE,
            env={**os.environ, "PRISMA_SCHEMA_ENGINE_BINARY": shutil.which("true") or "true",
                 "PRISMA_HIDE_UPDATE_MESSAGE": "1", "CHECKPOINT_DISABLE": "1"},
            check=True,
            timeout=120,
            capture_output=True,
        )  # fmt: skip


def start_neon_server(pair: LocalPair, **env: str) -> LiveServer:
    """`mirrorpool serve` on `pair` with a write key and a read key, rows limited to
    MAX_ROWS."""
    keys = [
        {"id": "neon-writer", "sha256": hash_key(KEYS["write"]), "scopes": ["write"]},
        {"id": "neon-reader", "sha256": hash_key(KEYS["read"]), "scopes": ["read"]},
    ]
    return start_server(
        pair,
        MIRRORPOOL_AUTH="keys",
        MIRRORPOOL_API_KEYS=json.dumps(keys),
        MIRRORPOOL_MAX_ROWS=str(MAX_ROWS),
        **env,
    )


@pytest.fixture(scope="module")
def neon_server(pair: LocalPair) -> Iterator[LiveServer]:
    """One such server on the shared pair."""
    server = start_neon_server(pair)
    yield server
    stop_server(server)


@pytest.fixture
def table(pair: LocalPair) -> str:
    """A table of the schema's owner, which the service's login may read and write."""
    name = f"neon_{uuid.uuid4().hex[:12]}"
    as_owner(pair, f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    return name


@dataclass
class Driver:
    """Runs tests/neon/client.mjs scenarios against one server."""

    node: str
    url: str

    def run(
        self,
        scenario: str,
        *args: str,
        key: str | None = None,
        auth_token: str | None = None,
        timeout: float = 60,
    ) -> dict[str, Any]:
        """One scenario's printed answer: {"ok": ...} or {"error": {...}}."""
        done = subprocess.run(
            [self.node, str(CLIENT), scenario, *args],
            cwd=HERE,
            env=self._env(key, auth_token),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return printed(done.stdout)

    def start(self, scenario: str, *args: str) -> subprocess.Popen[str]:
        """A scenario running in the background (its stderr says how far it got)."""
        return subprocess.Popen(
            [self.node, str(CLIENT), scenario, *args],
            cwd=HERE,
            env=self._env(None, None),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _env(self, key: str | None, auth_token: str | None) -> dict[str, str]:
        password = KEYS["write"] if key is None else key
        env = {
            **os.environ,
            "NEON_ENDPOINT": self.url + "/sql",
            # The user and database parts mean nothing to mirrorpool: only the key counts.
            "DATABASE_URL": f"postgresql://app:{password}@mirrorpool.internal/app",
            "TZ": "UTC",
        }
        if auth_token is not None:
            env["AUTH_TOKEN"] = auth_token
        return env

    def ok(self, scenario: str, *args: str, **kwargs: Any) -> Any:
        """A scenario that must succeed: what it returned."""
        answer = self.run(scenario, *args, **kwargs)
        assert "ok" in answer, answer
        return answer["ok"]

    def error(self, scenario: str, *args: str, **kwargs: Any) -> dict[str, Any]:
        """A scenario that must fail: the driver's error."""
        answer = self.run(scenario, *args, **kwargs)
        assert "error" in answer, answer
        error: dict[str, Any] = answer["error"]
        return error


def printed(stdout: str) -> dict[str, Any]:
    """The JSON line a scenario printed last."""
    answer: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return answer


@pytest.fixture
def driver(node_modules: str, neon_server: LiveServer) -> Driver:
    return Driver(node_modules, neon_server.url)


def owner_count(pair: LocalPair, table: str) -> int:
    """Rows in `table`, read straight from the primary."""
    with pair.primary.connect(user=OWNER) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])
