"""Request ids: taken from X-Request-ID when it is sane, generated otherwise, echoed back."""

from __future__ import annotations

import itertools
import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_VALID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Generated ids: a random per-process prefix and a counter, unique without a syscall each.
_PREFIX = secrets.token_hex(5)
_COUNTER = itertools.count()


def new_request_id() -> str:
    """A fresh 16-character id."""
    return f"{_PREFIX}{next(_COUNTER) & 0xFFFFFF:06x}"


def assign_request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when sane, else a new one; stored in the scope's state."""
    rid = None
    for name, value in scope["headers"]:
        if name == HEADER:
            if _VALID.fullmatch(value):
                rid = value.decode()
            break
    if rid is None:
        rid = new_request_id()
    state = scope.get("state")
    if state is None:
        scope["state"] = {"request_id": rid}
    else:
        state["request_id"] = rid
    return rid


def request_id_of(scope: Scope) -> str | None:
    """The id the middleware gave this request."""
    state = scope.get("state")
    return state.get("request_id") if isinstance(state, dict) else None


class RequestIdMiddleware:
    """Gives every HTTP request an id, stored in scope state and sent as X-Request-ID."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = (HEADER, assign_request_id(scope).encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)
