"""One log line per request: who asked what, how it ended, how long it took. Never the SQL
or its parameters (they may hold personal data), never a key.

During an outage every request may answer the same 503; those lines are folded: the first
of each route and problem type is logged as it happens, the rest are counted, and one line
per second says how many more there were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.request_id import request_id_of

logger = logging.getLogger("app.access")

FOLDED_STATUS = 503

# (method, route template, problem type) of a folded line.
FoldKey = tuple[str, str, str]


@dataclass
class _Fold:
    """The lines of one kind folded in the current window."""

    fields: dict[str, Any]
    until: float
    count: int = 0


class RepeatFolder:
    """Folds identical 503 access lines into one line per `window` seconds, with a count.

    One timer at a time, for the earliest window to end; `flush()` (at the app's shutdown)
    logs what is still counted."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self._folds: dict[FoldKey, _Fold] = {}
        self._timer: asyncio.TimerHandle | None = None

    def admit(self, key: FoldKey, fields: dict[str, Any]) -> bool:
        """True when this line is to be logged now; False when it was counted instead."""
        fold = self._folds.get(key)
        if fold is not None:
            fold.count += 1
            return False
        self._folds[key] = _Fold(dict(fields), time.monotonic() + self.window)
        self._arm()
        return True

    def flush(self, now: float | None = None) -> None:
        """Log the count of every window that has ended (every window, without `now`)."""
        for key, fold in list(self._folds.items()):
            if now is not None and fold.until > now:
                continue
            if fold.count:
                _log_folded(key, fold, self.window)
                # The outage goes on: keep counting, one line per window.
                fold.count = 0
                fold.until += self.window
            else:
                del self._folds[key]
            if now is None:
                self._folds.pop(key, None)
        if now is None and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._timer is not None or not self._folds:
            return
        earliest = min(fold.until for fold in self._folds.values())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, earliest - time.monotonic()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.flush(time.monotonic())
        self._arm()


def _log_folded(key: FoldKey, fold: _Fold, window: float) -> None:
    method, route, problem = key
    fields = fold.fields | {"repeated": fold.count, "request_id": None, "duration_ms": None}
    logger.warning(
        "%s %s %s %s: %d more like this in %g s",
        method,
        route,
        FOLDED_STATUS,
        problem,
        fold.count,
        window,
        extra={"fields": fields},
    )


class AccessLogMiddleware:
    """Logs each HTTP request at INFO (WARNING for 5xx) with structured fields; repeated
    503s are folded by the `folder` (shared by every stack of one app)."""

    def __init__(self, app: ASGIApp, folder: RepeatFolder | None = None) -> None:
        self.app = app
        self.folder = folder if folder is not None else RepeatFolder()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._flushing(send))
            return
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
                "problem": state.get("problem"),
            }
            if status != FOLDED_STATUS or self.folder.admit(_fold_key(scope, fields), fields):
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

    def _flushing(self, send: Send) -> Send:
        async def flushing_send(message: Message) -> None:
            # What is still counted at shutdown is logged before the process goes.
            if message["type"].startswith("lifespan.shutdown"):
                self.folder.flush()
            await send(message)

        return flushing_send


def _fold_key(scope: Scope, fields: dict[str, Any]) -> FoldKey:
    route = getattr(scope.get("route"), "path", None) or scope["path"]
    return (str(fields["method"]), str(route), str(fields["problem"] or "none"))
