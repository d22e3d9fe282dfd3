"""A database node: where it is, its connection pool, and what the monitor last saw of it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from psycopg import AsyncConnection, AsyncRawCursor
from psycopg_pool import AsyncConnectionPool, PoolClosed

from app.cluster.scram_keys import LoginKeys
from app.cluster.share import KeyShare, Refills, share_of
from app.dsn import as_login, describe_dsn, parse_dsn, with_defaults, with_overrides
from app.settings import Settings
from app.supervisor import Supervisor

logger = logging.getLogger(__name__)

# get_stats() leaves out counters that never moved; /pool/stats shows them all, at 0.
POOL_STAT_NAMES = (
    "pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting",
    "requests_num", "requests_queued", "requests_wait_ms", "requests_errors", "usage_ms",
    "returns_bad", "connections_num", "connections_ms", "connections_errors", "connections_lost",
)  # fmt: skip


ConnectionCallback = Callable[[AsyncConnection[Any]], Awaitable[None]]

# How long a pool keeps reconnecting on its own after losing its server. psycopg_pool's
# default, 5 minutes with waits doubling from 1 s, would leave a pool idle for seconds (after
# an 8 s outage, 7 s) once its server is back; beyond this, the health monitor decides, and
# a node found up again has its pool refilled at once (Cluster).
POOL_RECONNECT_S = 2.0


class Role(StrEnum):
    """What a node is, as observed (not as configured)."""

    PRIMARY = "primary"
    MIRROR = "mirror"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ServerIdentity:
    """Which PostgreSQL server a connection reached.

    Two connections reached the same server when they report the same system identifier
    (made by initdb; a primary and its physical replicas share it) and the same postmaster
    start time (different for every server, and after every restart). The address and port
    the server saw the connection arrive on are kept for people to read but not compared:
    they are NULL over a Unix socket, and one server may listen on several addresses.
    """

    system_identifier: int
    started: datetime
    address: str | None = field(default=None, compare=False)
    port: int | None = field(default=None, compare=False)

    @classmethod
    def from_probe(
        cls, system_identifier: int, started_us: int, address: str | None, port: int | None
    ) -> ServerIdentity:
        """From the probe's columns: the start time in microseconds since the Unix epoch."""
        started = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=started_us)
        return cls(system_identifier, started, address, port)

    def __str__(self) -> str:
        where = f" at {self.address}:{self.port}" if self.address else ""
        return f"system {self.system_identifier} started {self.started.isoformat()}{where}"


def role_of(reachable: bool | None, in_recovery: bool | None) -> Role:
    """primary when reachable and not in recovery, mirror when in recovery."""
    if not reachable or in_recovery is None:
        return Role.UNKNOWN
    return Role.MIRROR if in_recovery else Role.PRIMARY


@dataclass
class NodeState:
    """The monitor's latest view of a node."""

    reachable: bool | None = None
    in_recovery: bool | None = None
    timeline: int | None = None
    replay_lag_s: float | None = None
    replay_lag_bytes: int | None = None
    latency_ms: float | None = None
    last_check: datetime | None = None
    last_change: datetime | None = None
    consecutive_failures: int = 0
    error: str | None = None
    # The server the last successful probe reached (kept while the node is down).
    server: ServerIdentity | None = None

    @property
    def role(self) -> Role:
        """primary when reachable and not in recovery, mirror when in recovery."""
        return role_of(self.reachable, self.in_recovery)


class Node:
    """One PostgreSQL server mirrorpool talks to, with its own pool."""

    def __init__(
        self,
        name: str,
        dsn: str,
        settings: Settings,
        *,
        session_options: str = "",
        configure: ConnectionCallback | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.name = name
        self.target = describe_dsn(dsn)
        if session_options:
            # Ours go after the DSN's own `options`: for the same setting, the later wins.
            own = parse_dsn(dsn).get("options", "")
            dsn = with_overrides(dsn, options=f"{own} {session_options}".strip())
        self._dsn = with_defaults(
            dsn,
            application_name=settings.application_name,
            connect_timeout=settings.connect_timeout,
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            # A vanished host must not hold a connection for the kernel's default 15 minutes.
            tcp_user_timeout=10_000,
        )
        self.state = NodeState()
        self._settings = settings
        self._configure = configure
        # Per pool (by name): who waits for the pool's next new connection.
        self.refills: dict[str, Refills] = {}
        # The SCRAM keys the pools log in with instead of passwords (app/cluster/scram_keys.py).
        # (not behind PgBouncer: with plain-text passwords it runs PBKDF2 on its one thread
        # for each probe, and its clients' logins are few and long-lived)
        self.scram = LoginKeys(supervisor, name, enabled=not settings.pgbouncer)
        self._passwords = {
            role: secret.get_secret_value() for role, secret in settings.role_passwords.items()
        }
        self.pool = self._make_pool(self._dsn, name, settings.pool_min_size, settings.pool_max_size)
        # One pool per database role a key logs in as (app/api/auth.py), opened on first use.
        self.logins: dict[str, AsyncConnectionPool[AsyncConnection[Any]]] = {}
        # Each key's share of each pool (app/cluster/share.py), by role (None: the service's).
        self.shares: dict[str | None, KeyShare] = {}
        self._closed = False

    def _make_pool(
        self, dsn: str, name: str, min_size: int, max_size: int
    ) -> AsyncConnectionPool[AsyncConnection[Any]]:
        settings = self._settings
        # psycopg never prepares on its own: mirrorpool prepares by name itself (app/sql/
        # pipeline), and forgets its names when a session is reset; two caches of names
        # on one session would be one too many (psycopg's DEALLOCATE ALL after a ROLLBACK
        # would drop ours). Behind PgBouncer nothing is prepared at all.
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "cursor_factory": AsyncRawCursor,
            "prepare_threshold": None,
        }
        refills = self.refills[name] = Refills()

        async def configure(conn: AsyncConnection[Any]) -> None:
            if self._configure is not None:
                await self._configure(conn)
            refills.opened()

        return AsyncConnectionPool(
            dsn,
            connection_class=self.scram.connection_class,
            open=False,
            name=name,
            min_size=min_size,
            max_size=max_size,
            timeout=settings.pool_timeout,
            max_waiting=settings.pool_max_waiting,
            max_lifetime=settings.pool_max_lifetime,
            max_idle=settings.pool_max_idle,
            reconnect_timeout=POOL_RECONNECT_S,
            kwargs=kwargs,
            configure=configure,
        )

    def login_dsn(self, role: str) -> str:
        """The node's DSN for logging in as `role` (a secret like the DSN itself)."""
        return as_login(self._dsn, role, self._passwords.get(role))

    async def pool_for(self, role: str | None) -> AsyncConnectionPool[AsyncConnection[Any]]:
        """The pool of connections logged in as `role`, or the service's own for None."""
        if role is None:
            return self.pool
        pool = self.logins.get(role)
        if pool is None:
            if self._closed:
                raise PoolClosed(f"the pools of {self.name} are closed")
            pool = self.logins[role] = self._make_pool(
                self.login_dsn(role), f"{self.name}:{role}", 0, self._settings.role_pool_max_size
            )
        if pool.closed and not self._closed:
            await pool.open(wait=False)
        return pool

    def share(self, role: str | None) -> KeyShare:
        """Each key's share of the pool for `role` (None: the service's own login)."""
        share = self.shares.get(role)
        if share is None:
            settings = self._settings
            size = settings.pool_max_size if role is None else settings.role_pool_max_size
            name = self.name if role is None else f"{self.name}:{role}"
            share = KeyShare(name, share_of(size, settings.key_max_pool_share))
            self.shares[role] = share
        return share

    @property
    def pools(self) -> list[AsyncConnectionPool[AsyncConnection[Any]]]:
        """Every pool of the node: the service's own, then one per role in use."""
        return [self.pool, *self.logins.values()]

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.target}>"

    @property
    def dsn(self) -> str:
        """The node's full conninfo (a secret: never log or return it)."""
        return self._dsn

    @property
    def role(self) -> Role:
        """The node's observed role."""
        return self.state.role

    async def open(self) -> None:
        """Open the pool without waiting: connections are made in the background."""
        await self.pool.open(wait=False)

    async def close(self, timeout: float) -> None:
        """Close every pool, giving checked-out connections `timeout` seconds to come back."""
        self._closed = True
        await asyncio.gather(*(pool.close(timeout=timeout) for pool in self.pools))
        await self.scram.close()

    async def drain(self) -> None:
        """Replace every pool's connections (the DSN now leads to another server)."""
        for pool in self.pools:
            if not pool.closed:
                await pool.drain()

    async def check(self) -> None:
        """Throw out every pool's broken connections and open new ones where needed."""
        for pool in self.pools:
            if not pool.closed:
                await pool.check()

    async def lose(self, error: Callable[[], Exception]) -> None:
        """The node was found down or fenced: fail every request still waiting for one of its
        connections with an `error()` now, as its in-flight requests are (none will come, or
        none should be used), and drop its connections, each counted in `connections_lost`.

        psycopg_pool fails its waiters only when it closes, and keeps a wait that ended
        (timed out, cancelled) in its queue until a connection comes back, so a dead node's
        pool would go on reporting requests nobody makes. Its queue is taken out as its own
        close() does (the failed waits count in `requests_errors`). The connections in use
        are being failed by their requests (Engine); the idle ones' sockets are shut, so
        that check() finds them broken at once, even on a frozen server, and replaces them.
        """
        for pool in self.pools:
            if pool.closed:
                continue
            async with pool._lock:
                waiting = list(pool._waiting)
                pool._waiting.clear()
            for position in waiting:
                await position.fail(error())
            stats = pool.get_stats()
            # check() counts the idle ones it finds broken; the pool never counts the others.
            in_use = stats.get("pool_size", 0) - stats.get("pool_available", 0)
            pool._stats[pool._CONNECTIONS_LOST] += max(in_use, 0)
            for conn in list(pool._pool):
                shut(conn)
            await pool.check()

    def requests_waiting(self) -> int:
        """Requests waiting for a connection of the service's own pool (routing reads)."""
        return int(self.pool.get_stats().get("requests_waiting", 0))

    def pool_stats(self, role: str | None = None) -> dict[str, int]:
        """psycopg_pool's get_stats() of the service's pool (or a role's), every counter
        present."""
        pool = self.pool if role is None else self.logins[role]
        # A wait that ended stays in psycopg_pool's queue until a connection comes back
        # (see lose()): only the ones still waiting are requests waiting.
        waiting = [w for w in pool._waiting if w.conn is None and w.error is None]
        if len(waiting) != len(pool._waiting):
            pool._waiting.clear()
            pool._waiting.extend(waiting)
        stats = dict.fromkeys(POOL_STAT_NAMES, 0)
        stats.update(pool.get_stats())
        return stats


def shut(conn: AsyncConnection[Any]) -> None:
    """EOF on the connection's socket: whatever waits on it fails at once, even when its
    server is frozen and would never answer."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=socket.dup(conn.pgconn.socket))
        with sock:
            sock.shutdown(socket.SHUT_RDWR)
