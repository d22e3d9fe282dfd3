"""Counts in-flight HTTP requests (the gate, app/api/gate.py, counts them in and out) so
shutdown can wait for them before closing the pools."""

from __future__ import annotations

import asyncio
import contextlib


class InFlight:
    """The number of HTTP requests being served, and a way to wait until it is zero."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        """A request started."""
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        """A request finished."""
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for in-flight requests; True if none is left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return self.count == 0
