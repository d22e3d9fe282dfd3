"""Bounded mixed load through mirrorpool, every answer recorded with its time and its node.

Readers send `read_only` reads, writers insert fresh ids; a failed request is recorded, not
raised, so that a test can count what clients saw. The table `t` records, with each row,
the timeline it was written on (TIMELINE_SQL), so a test can tell which primary took it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import httpx

from app.devdb import OWNER
from tests.cluster.patroni import PatroniCluster
from tests.waiting import eventually_sync

READ_TIMEOUT_MS = 5000
WRITE_TIMEOUT_MS = 3000

# The timeline the writing server is on, as the health probe reads it (app/cluster/monitor.py).
TIMELINE_SQL = "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
TABLE_SQL = f"CREATE TABLE t (id int PRIMARY KEY, tli int NOT NULL DEFAULT {TIMELINE_SQL})"


@dataclass(frozen=True)
class Answer:
    """One request and what came back."""

    kind: str
    started: float
    ended: float
    status: int  # 0: the request failed without an HTTP answer
    node: str | None
    ident: int | None = None


@dataclass
class Load:
    """`readers` read-only readers and `writers` writers, each pausing `pause` s between
    requests, until the block ends."""

    client: httpx.AsyncClient
    readers: int = 8
    writers: int = 4
    pause: float = 0.01
    read_sql: str = "SELECT count(*) FROM t"
    answers: list[Answer] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _tasks: list[asyncio.Future[None]] = field(default_factory=list)

    async def _send(self, kind: str, body: dict[str, object], ident: int | None) -> None:
        started = time.monotonic()
        try:
            r = await self.client.post("/v1/query", json=body)
            status, node = r.status_code, r.headers.get("x-mirrorpool-node")
        except httpx.HTTPError:
            status, node = 0, None
        self.answers.append(Answer(kind, started, time.monotonic(), status, node, ident))

    async def _read(self) -> None:
        body = {"sql": self.read_sql, "read_only": True, "timeout_ms": READ_TIMEOUT_MS}
        while not self._stop.is_set():
            await self._send("read", body, None)
            await asyncio.sleep(self.pause)

    async def _write(self) -> None:
        while not self._stop.is_set():
            ident = next(self._ids)
            body = {
                "sql": "INSERT INTO t (id) VALUES ($1)",
                "params": [ident],
                "timeout_ms": WRITE_TIMEOUT_MS,
            }
            await self._send("write", body, ident)
            await asyncio.sleep(self.pause)

    async def __aenter__(self) -> Load:
        coros = [self._read() for _ in range(self.readers)]
        coros += [self._write() for _ in range(self.writers)]
        self._tasks = [asyncio.ensure_future(c) for c in coros]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def run_for(self, seconds: float) -> None:
        """Let the load run: the clients' own requests are what is being observed."""
        await asyncio.sleep(seconds)

    def reads(self) -> list[Answer]:
        """Every read answered so far."""
        return [a for a in self.answers if a.kind == "read"]

    def writes(self) -> list[Answer]:
        """Every write answered so far."""
        return [a for a in self.answers if a.kind == "write"]

    def failed_reads(self) -> list[Answer]:
        """Reads that did not get a 200."""
        return [a for a in self.reads() if a.status != 200]

    def acknowledged(self) -> dict[int, Answer]:
        """Writes answered 200, by id."""
        return {a.ident: a for a in self.writes() if a.status == 200 and a.ident is not None}

    def first_write_after(self, moment: float) -> float | None:
        """When the first write sent after `moment` was acknowledged, if one was."""
        done = [a.ended for a in self.writes() if a.status == 200 and a.started >= moment]
        return min(done) if done else None

    def failed_writes_after(self, moment: float) -> list[Answer]:
        """Writes that failed although sent after the first write acknowledged after
        `moment`: once writes are back, they stay back."""
        back = [a.started for a in self.writes() if a.status == 200 and a.started >= moment]
        if not back:
            return []
        return [a for a in self.writes() if a.started >= min(back) and a.status != 200]


def fresh_table(cluster: PatroniCluster) -> None:
    """An empty table `t` on the leader, made by the schema's owner, visible on the standby."""
    leader = cluster.wait_healthy()
    with leader.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS t")
        conn.execute(f"SET ROLE {OWNER}")
        conn.execute(TABLE_SQL)
    standby = cluster.replica()

    def visible() -> bool:
        with standby.connect() as conn:
            row = conn.execute("SELECT to_regclass('t') IS NOT NULL").fetchone()
        return bool(row and row[0])

    eventually_sync(visible, "the table on the standby")
