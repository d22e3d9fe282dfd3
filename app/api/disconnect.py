"""Noticing that the HTTP client went away, so its statement can be cancelled."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Receive


async def client_gone(receive: Receive) -> None:
    """Return once the client has disconnected (call after the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def disconnected(request: Request) -> None:
    """client_gone() for a Starlette request."""
    await client_gone(request.receive)
