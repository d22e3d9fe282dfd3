"""A key's fair share of a pool: no key holds more than its share of a node's connections.

One key flooding the pool with slow statements would otherwise take every connection, and
every other key would wait behind it in the pool's queue. Each pool has a share per key
(MIRRORPOOL_KEY_MAX_POOL_SHARE of its size, at least one connection); a key holding its
share waits in a line of its own for one of its own connections to come back, and never
enters the pool's queue, so other keys go straight to the connections left free.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from app.errors import PoolExhausted


def share_of(pool_size: int, share: float) -> int:
    """How many of a pool's connections one key may hold (at least one)."""
    return max(1, math.floor(pool_size * share + 1e-9))


class KeyShare:
    """How many connections of one pool each key holds, and each key's line of waiters."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lines: dict[str, deque[asyncio.Future[None]]] = {}

    def held(self, key: str) -> int:
        """Connections `key` holds now."""
        return self._held.get(key, 0)

    def waiting(self) -> int:
        """Requests waiting in the keys' lines, all keys together."""
        return sum(len(line) for line in self._lines.values())

    async def acquire(self, key: str, timeout: float | None) -> None:
        """Take one of `key`'s slots, waiting in its line (FIFO) up to `timeout` seconds."""
        line = self._lines.get(key)
        if self._held.get(key, 0) < self.limit and not line:
            self._held[key] = self._held.get(key, 0) + 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line = self._lines.setdefault(key, deque())
        line.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release(key)  # handed a slot just as it gave up: pass it on
            else:
                waiter.cancel()
                if waiter in line:
                    line.remove(waiter)
                if not line and self._lines.get(key) is line:
                    del self._lines[key]
            if isinstance(exc, TimeoutError):
                raise PoolExhausted(
                    f"this key holds its share of {self.name}'s connections ({self.limit}) and "
                    f"none of them came back within {timeout:g} s"
                ) from None
            raise

    def release(self, key: str) -> None:
        """Give back one of `key`'s slots: to the first in its line, else to the pool."""
        line = self._lines.get(key)
        while line:
            waiter = line.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; `key` holds as many as before
                if not line:
                    del self._lines[key]
                return
        self._lines.pop(key, None)
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)


class Refills:
    """The connections a pool opens, each handed to the first caller waiting for one: a key
    whose statement closed its connection holds its share until the pool has opened another
    (app/sql/checkout.py), so the logins it costs come out of its own share, not out of the
    connections other keys are using."""

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()

    def opened(self) -> None:
        """The pool opened a connection: the first caller waiting for one goes on."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def replaced(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the pool's next new connection."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            pass
        finally:
            if not waiter.done():
                waiter.cancel()
            if waiter in self._waiting:
                self._waiting.remove(waiter)
