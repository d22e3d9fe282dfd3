"""Noticing that the HTTP client went away, so its statement can be cancelled."""

from __future__ import annotations

from starlette.requests import Request


async def disconnected(request: Request) -> None:
    """Return once the client has disconnected (after the body has been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
