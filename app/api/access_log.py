"""One log line per request: who asked what, how it ended, how long it took. Never the SQL
or its parameters (they may hold personal data), never a key."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.request_id import request_id_of

logger = logging.getLogger("app.access")


class AccessLogMiddleware:
    """Logs each HTTP request at INFO (WARNING for 5xx) with structured fields."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        node = None

        async def recording_send(message: Message) -> None:
            nonlocal status, node
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == b"x-mirrorpool-node":
                        node = value.decode()
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            state = scope.get("state") or {}
            fields = {
                "request_id": request_id_of(scope),
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "node": node,
                "key_id": state.get("key_id"),
                "sqlstate": state.get("sqlstate"),
            }
            level = logging.WARNING if status >= 500 else logging.INFO
            logger.log(
                level,
                "%s %s %s %.1f ms",
                fields["method"],
                fields["path"],
                status,
                fields["duration_ms"],
                extra={"fields": fields},
            )
