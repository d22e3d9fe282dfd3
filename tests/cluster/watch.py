"""When did a server start accepting writes? Watched from outside mirrorpool, every 5 ms.

A thread polls each server's pg_is_in_recovery() on a connection of its own (reconnecting
while the server is down) and records the moments a server is first seen out of recovery
after being in recovery or unreachable: the completion of a promotion, as a client could
first notice it. Delays measured from these moments are at most 5 ms plus a round trip
short of the truth.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

POLL_S = 0.005


class RoleWatch:
    """Watches servers named by `dsns` (name -> DSN) until the block ends."""

    def __init__(self, dsns: dict[str, str]) -> None:
        self.dsns = dsns
        # name -> moments (time.monotonic()) the server was first seen writable again.
        self.promoted: dict[str, list[float]] = {name: [] for name in dsns}
        self.writable: dict[str, bool] = dict.fromkeys(dsns, False)
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch, args=(name,), daemon=True) for name in dsns
        ]

    def __enter__(self) -> RoleWatch:
        for thread in self._threads:
            thread.start()
        # The first sighting is the state before the test acts, not a promotion.
        deadline = time.monotonic() + 10
        while self._seen != set(self.dsns) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _watch(self, name: str) -> None:
        conn: psycopg.Connection[Any] | None = None
        first = True
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsns[name], autocommit=True, connect_timeout=1)
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                writable = bool(row and not row[0])
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
                writable = False
            if writable and not self.writable[name] and not first:
                self.promoted[name].append(time.monotonic())
            self.writable[name] = writable
            if first:
                self._seen.add(name)
                first = False
            time.sleep(POLL_S)
        if conn is not None:
            conn.close()

    def last_promotion(self, after: float = 0.0) -> tuple[str, float] | None:
        """The latest server seen becoming writable after `after`, and when."""
        seen = [(t, name) for name, times in self.promoted.items() for t in times if t > after]
        if not seen:
            return None
        moment, name = max(seen)
        return name, moment
